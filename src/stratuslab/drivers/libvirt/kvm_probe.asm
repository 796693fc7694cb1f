; StratusLab KVM probe: a 512-byte boot sector that walks the path a Linux kernel takes
; (real mode -> protected mode -> PAE paging -> 64-bit long mode, SSE on, CPUID, RDMSR),
; prints "KVMPROBE-LM" to COM1, runs a fixed memory workload (16 passes writing 16 MiB),
; executes a few SSE instructions, then prints "KVMPROBE-OK" and halts.
;
; The workload matters: some nested "KVM" setups enter long mode fine but run guest code
; hundreds of times slower than TCG (Linux then seems to hang while decompressing). A usable
; KVM finishes the workload in milliseconds, TCG in well under a second; the probe gives
; up after a few seconds.
;
; Assemble: nasm -f bin -o kvm_probe.img kvm_probe.asm   (then embed in kvm_probe.py)
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    in al, 0x92                 ; fast A20
    or al, 2
    and al, 0xfe
    out 0x92, al
    mov di, 0x1000              ; zero PML4, PDPT, PD at 0x1000..0x3fff
    mov cx, 0x3000 / 4
    xor eax, eax
    rep stosd
    mov dword [0x1000], 0x2003  ; PML4[0] -> PDPT
    mov dword [0x2000], 0x3003  ; PDPT[0] -> PD
    mov di, 0x3000              ; PD: identity-map 1 GiB with 2 MiB pages
    mov eax, 0x83
.pd:
    mov [di], eax
    add eax, 0x200000
    add di, 8
    cmp di, 0x4000
    jb .pd
    lgdt [gdt_desc]
    mov eax, cr0
    or eax, 1                   ; CR0.PE
    mov cr0, eax
    jmp 0x08:pmode

bits 32
pmode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 0x80000001         ; long mode supported?
    cpuid
    bt edx, 29
    jnc halt
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10) ; PAE, OSFXSR, OSXMMEXCPT
    mov cr4, eax
    mov eax, 0x1000
    mov cr3, eax
    mov ecx, 0xc0000080         ; EFER.LME
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    and eax, ~(1 << 2)          ; CR0.EM off (SSE)
    or eax, (1 << 31) | (1 << 1); CR0.PG, CR0.MP
    mov cr0, eax
    jmp 0x18:lmode

bits 64
lmode:
    mov rsp, 0x7c00
    mov rsi, msg_lm
    call puts
    mov eax, 7                  ; IA32_ARCH_CAPABILITIES (MSR 0x10a) if CPUID says it exists
    xor ecx, ecx
    cpuid
    bt edx, 29
    jnc .work
    mov ecx, 0x10a
    rdmsr
.work:
    mov ecx, 16                 ; integer workload: 16 passes of 8-byte stores over 16 MiB
.pass:
    mov edi, 0x200000
.store:
    mov [rdi], rdi
    add edi, 16
    cmp edi, 0x1200000
    jb .store
    dec ecx
    jnz .pass
    pxor xmm0, xmm0             ; SSE, as compilers emit it
    mov eax, 1
    movd xmm1, eax
    paddq xmm0, xmm1
    movdqa [0x4000], xmm0
    cmp dword [0x4000], 1
    jne halt
    mov rsi, msg_ok
    call puts
halt:
    cli
    hlt
    jmp halt

puts:                           ; write the NUL-terminated string at rsi to COM1
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    lodsb
    test al, al
    jz .done
    mov dx, 0x3f8
    out dx, al
    jmp puts
.done:
    ret

msg_lm: db "KVMPROBE-LM", 13, 10, 0
msg_ok: db "KVMPROBE-OK", 13, 10, 0

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08 code32
    dq 0x00cf92000000ffff       ; 0x10 data
    dq 0x00af9a000000ffff       ; 0x18 code64
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt

times 510 - ($ - $$) db 0
dw 0xaa55

"""Use cases. Each owns its transaction; none knows HTTP."""

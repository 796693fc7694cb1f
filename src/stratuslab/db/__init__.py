"""Database: SQLAlchemy 2 models, sessions, migrations."""

"""Programmatic ``alembic upgrade head`` (used by ``poisonscan migrate/serve/demo``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.config import get_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def migrations_root() -> Path:
    """The source checkout, else the working directory (an installed image's /app)."""
    return REPO_ROOT if (REPO_ROOT / "alembic.ini").exists() else Path.cwd()


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``database_url`` using the repository's migrations."""
    root = migrations_root()
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_head(database_url: str | None = None) -> None:
    """Create or upgrade the schema; SQLite files get their directory made first."""
    settings = get_settings()
    url = database_url or settings.database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")

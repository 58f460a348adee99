"""`just serve`: the server in this process, or in N worker processes that uvicorn supervises from here.

This module stays light (no torch, no model, no index): with --workers N this process only supervises the
workers, each of which loads the model and maps the index itself (`st_poetry.serve.app:app_from_env`), so the
supervisor adds little to the server's memory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from st_poetry.core.config import IndexConfig, ServeConfig
from st_poetry.core.errors import UserError
from st_poetry.core.log import get_logger

logger = get_logger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# `serve --workers N` hands its ServeConfig to the worker processes in this environment variable, as JSON.
CONFIG_ENV = "ST_POETRY_SERVE_CONFIG"


def trusted_hosts(config: ServeConfig) -> list[str]:
    """The Host header names answered: --host, the loopback names when it is a loopback address, --allowed-hosts.

    A host of all interfaces (0.0.0.0, ::) has no name of its own: the clients' names must be given.
    """
    host = config.host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        hosts, loopback = [host], host == "localhost"
    else:
        hosts = [] if address.is_unspecified else [f"[{address}]" if address.version == 6 else str(address)]
        loopback = address.is_loopback or address.is_unspecified
    extra = [f"[{name}]" if ":" in name and not name.startswith("[") else name for name in config.allowed_hosts]
    return list(dict.fromkeys([*hosts, *(LOOPBACK_NAMES if loopback else ()), *extra]))


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """uvicorn's settings; no `server: uvicorn` header, which would tell every client the software it runs."""
    return {"host": config.host, "port": config.port, "log_level": "info", "server_header": False}


def index_size(folder: Path) -> int:
    """The lines index.json records: a missing or unreadable index fails here, once, rather than in every worker
    (which uvicorn would start again in turn); the workers check the rest of the folder as `just search` does."""
    info = folder / IndexConfig.MARKER
    if not info.is_file():
        raise UserError(
            f"no index at {folder} (no {info.name}): build one with `just index --model PATH --out {folder}`"
        )
    try:
        return int(json.loads(info.read_text(encoding="utf-8"))["size"])
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise UserError(
            f"{info} is unreadable ({error!r}): rebuild it: just index --model PATH --out {folder}"
        ) from None


def serve(config: ServeConfig) -> None:
    """Load the index and model, then serve until interrupted; with --workers N, N processes do so on one port."""
    import uvicorn

    host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
    hosts = f"(Host names answered: {', '.join(trusted_hosts(config))}; more with --allowed-hosts)"
    if config.workers == 1:
        from st_poetry.serve.app import load_app

        app = load_app(config)
        lines = app.state.searcher.index.info["size"]
        logger.info(f"serving {lines:,} lines of {config.index} at http://{host}:{config.port}/ {hosts}")
        uvicorn.run(app, **uvicorn_options(config))
        return
    lines = index_size(Path(config.index))
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    logger.info(
        f"serving {lines:,} lines of {config.index} at http://{host}:{config.port}/ with {config.workers} worker "
        f"processes {hosts}"
    )
    uvicorn.run("st_poetry.serve.app:app_from_env", factory=True, workers=config.workers, **uvicorn_options(config))

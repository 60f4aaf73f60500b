"""What the server lets callers do and see (docs/serve.md, "Security").

* POST bodies must be ``application/json``: a web page may send a "simple" cross-site
  request (``text/plain``, or a body with no type) to a server on the user's machine
  without asking, but not a JSON one.
* An optional token (``$NBP_SERVE_TOKEN`` or ``nbp serve --token-file``) guards the
  routes that change state (``POST /feedback``: outcomes drive the monitor's rollback and
  off switch). A server bound beyond loopback without a token refuses them.
* Messages name files relative to the project (or by the variable that moved them),
  never by absolute path: that tells a caller about the machine.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from nbpipeline.errors import ServeError

TOKEN_ENV = "NBP_SERVE_TOKEN"
JSON_TYPE = "application/json"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True if ``host`` (an address or name to bind) is reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # any other name may resolve to a public address
        return False


def is_json(content_type: str | None) -> bool:
    """True for ``application/json`` (with parameters such as ``charset``)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON_TYPE


def read_token(token_file: Path | str | None = None) -> str | None:
    """The token from ``token_file`` if given, else from ``$NBP_SERVE_TOKEN``, else None."""
    if token_file is None:
        token = os.environ.get(TOKEN_ENV)
        if token is not None and not token.strip():
            raise ServeError(f"${TOKEN_ENV} is set but empty; set a token or unset it")
        return token.strip() if token else None
    path = Path(token_file)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"{path}: cannot read the token file ({exc}); pass a readable "
                         "file holding the token to --token-file") from exc
    if not token:
        raise ServeError(f"{path}: the token file is empty; write the token into it")
    return token


@dataclass(frozen=True)
class Access:
    """Who may change state: the token, and whether the server is reachable from afar."""

    token: str | None = None
    loopback: bool = True

    def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """(status, message) refusing a state-changing request, or None to allow it."""
        if self.token is None:
            if self.loopback:
                return None
            return 403, (
                "this server listens beyond loopback without a token, so it accepts no "
                f"state-changing requests; restart it with ${TOKEN_ENV} or --token-file set, "
                "and send `Authorization: Bearer <token>`"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return 401, ("this route needs the server's token: send "
                         "`Authorization: Bearer <token>` (the token nbp serve was started with)")
        return None

    def warning(self, host: str) -> str | None:
        """The start-up warning for an exposed server without a token, else None."""
        if self.loopback or self.token is not None:
            return None
        return (f"listening on {host} (beyond loopback) without a token: anyone who can reach "
                f"it can ask for predictions, and POST /feedback is refused; set ${TOKEN_ENV} "
                "or pass --token-file to accept feedback")


@dataclass(frozen=True)
class PathNames:
    """Names the server's files in what callers see: relative to the project root, or
    from the variable that moved them ($NBPIPELINE_REGISTRY, $NBPIPELINE_PREDLOG)."""

    prefixes: tuple[tuple[str, str], ...] = ()  # (absolute prefix, shown as), longest first

    @classmethod
    def of(cls, root: Path, moved: dict[str, Path | None]) -> PathNames:
        """For a project at ``root``; ``moved`` maps a variable's name to the path it
        gives (files outside the root are shown under that name)."""
        places: dict[str, str] = {}
        for name, path in moved.items():
            if path is not None and not _inside(path, root):
                places[str(path)] = f"${name}"
                places[str(Path(path).resolve())] = f"${name}"
        for base in {root, root.resolve()}:
            places[str(base) + os.sep] = ""
        ordered = sorted(places.items(), key=lambda item: -len(item[0]))
        return cls(tuple(ordered))

    def __call__(self, text: str) -> str:
        """``text`` with every known absolute path replaced by its public name."""
        for prefix, shown in self.prefixes:
            text = text.replace(prefix, shown)
        return text


def _inside(path: Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())

"""Checks made before a run starts, so that Prefect's refusals become one line up front.

Without them a Prefect server that does not answer shows as a client retrying for minutes
and then a long traceback, and a parameter over the server's size limit as a refusal in the
middle of the run, with the whole value echoed.
"""

from __future__ import annotations

import urllib.error
import urllib.request

__all__ = ["PrefectUnreachable", "check_reachable", "max_parameter_size"]


class PrefectUnreachable(RuntimeError):
    """The Prefect API the user named does not answer (a one-line message)."""


def check_reachable(api_url: str, timeout: float = 5.0) -> None:
    """Raise PrefectUnreachable unless something answers HTTP at ``api_url``.

    Any HTTP answer counts (a Prefect Cloud workspace answers 401 without a key: the client
    will say so itself); only a failure to connect or a timeout does not.
    """
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise PrefectUnreachable(
            f"the Prefect API at {api_url} does not answer ({reason}); check PREFECT_API_URL, "
            "or unset it to run on a temporary local Prefect server"
        ) from None


def max_parameter_size() -> int:
    """The largest flow-run parameters (bytes of JSON) Prefect's server stores; 0: no limit.

    Prefect's own setting, which already reads PREFECT_SERVER_API_MAX_PARAMETER_SIZE.
    """
    from prefect.settings import get_current_settings

    return int(get_current_settings().server.api.max_parameter_size)

"""replytime: how fast do sales reps answer new leads by email.

The public API returns pandas DataFrames; see README.md, "Python API":

    import replytime
    a = replytime.analyse(db="cache.sqlite", config="replytime.toml")
    a.reps(since="last-week")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# The version, read by pyproject.toml (dynamic) at build time; see CHANGELOG.md.
__version__ = "0.2.0"

# Loaded on first use, so `replytime --help` does not pay for pandas.
_EXPORTS = {
    "Analysis": "replytime.api",
    "analyse": "replytime.api",
    "import_files": "replytime.api",
    "refresh_threads": "replytime.analysis.rethread",
    "open_cache": "replytime.store",
    "Config": "replytime.config",
    "load_config": "replytime.config",
    "parse_config": "replytime.config",
    "ReplytimeError": "replytime.errors",
    "match_leads": "replytime.analysis.matcher",
    "business_seconds": "replytime.analysis.hours",
    "export_parquet": "replytime.output.export",
    "explain": "replytime.analysis.explain",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'replytime' has no attribute {name!r}")

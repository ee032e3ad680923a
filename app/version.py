"""The one version of SoftUnlearn: the package's (pyproject reads it from here), the API's
(``GET /v1/version``, the OpenAPI ``info.version``) and the CLI's (``softunlearn --version``).

Standard library only: the thin client imports it.
"""

from __future__ import annotations

__all__ = ["API_VERSION", "__version__"]

__version__ = "1.1.0"
"""Package and service version (semantic versioning: a breaking API change bumps the major)."""
API_VERSION = "v1"
"""The path prefix of the HTTP API this version serves."""

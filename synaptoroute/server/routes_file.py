"""Routes files moved to :mod:`synaptoroute.routes_file` (the CLI reads them without the
service); this name stays for code written against 0.2.0."""

from ..routes_file import *  # noqa: F403
from ..routes_file import __all__ as __all__

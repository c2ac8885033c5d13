"""Deprecated alias of :mod:`clipserve.sample` (the sample set's spec, renderers and builder),
kept so code written against the single-module version still imports. New code imports
``clipserve.sample``."""

from clipserve.sample import *  # noqa: F401,F403
from clipserve.sample import __all__  # noqa: F401

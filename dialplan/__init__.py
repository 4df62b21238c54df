"""Routing policy: where should this call go? Speaks neither AGI nor HTTP."""

from .call import InboundCall
from .decision import CONTRACT_VARIABLES, RouteDecision, RouteStatus, fallback_variables
from .router import Router
from .settings import RoutingSettings
from .targets import DialTargets

__all__ = [
    "CONTRACT_VARIABLES",
    "DialTargets",
    "InboundCall",
    "RouteDecision",
    "RouteStatus",
    "Router",
    "RoutingSettings",
    "fallback_variables",
]

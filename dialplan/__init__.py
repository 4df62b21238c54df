"""Routing policy: where should this call go? Speaks neither AGI nor HTTP."""

from .availability import DeviceStateProbe, DeviceStateUnavailable, FixedDeviceStates, NoDeviceStates, StateQuery
from .call import InboundCall
from .decision import CONTRACT_VARIABLES, RouteDecision, RouteStatus, fallback_variables
from .history import CallHistory
from .outcome import CallOutcome, RouteSnapshot
from .router import Router
from .settings import RoutingSettings
from .targets import DialTargets

__all__ = [
    "CONTRACT_VARIABLES",
    "CallHistory",
    "CallOutcome",
    "RouteSnapshot",
    "DeviceStateProbe",
    "DeviceStateUnavailable",
    "DialTargets",
    "FixedDeviceStates",
    "InboundCall",
    "NoDeviceStates",
    "RouteDecision",
    "RouteStatus",
    "Router",
    "RoutingSettings",
    "StateQuery",
    "fallback_variables",
]

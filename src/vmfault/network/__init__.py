"""vmfault's virtual network: a switch joining the machines of a testbed, owned by vmfault.

It knows nothing of faults: a fault kind hands the switch a `LinkFilter`.
"""

from vmfault.network.switch import Delivery, LinkCounters, LinkFilter, Port, Switch, mac_text

__all__ = ["Delivery", "LinkCounters", "LinkFilter", "Port", "Switch", "mac_text"]

"""Everything OPC UA: the simulated PLC served from the twin, the tag map, and the bridge client
(a ``PlantIO``) that talks to the simulated or the real PLCs. See docs/opcua.md."""

from .bridge import ClientSecurity, OpcUaBridge
from .browse import browse
from .plc_sim import run_plc_sim
from .security import Pki, SecurityError, UserDirectory, create_certificate
from .server import PlcServer, ServerSecurity
from .tagmap import Role, TagMap, required_role

__all__ = [
    "ClientSecurity", "OpcUaBridge", "Pki", "PlcServer", "Role", "SecurityError", "ServerSecurity",
    "TagMap", "UserDirectory", "browse", "create_certificate", "required_role", "run_plc_sim",
]

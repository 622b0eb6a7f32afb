"""Everything OPC UA: the simulated PLC served from the twin, the tag map, the bridge client
(a ``PlantIO``) that talks to the simulated or the real PLCs, and the security of both faces
(``client_security``, ``server_security``). See docs/opcua.md and docs/security.md."""

from .bridge import OpcUaBridge
from .browse import browse
from .client_security import ClientSecurity
from .link_state import LinkStatus
from .plant_link import PlantLink
from .plc_sim import run_plc_sim
from .security import Pki, SecurityError, create_certificate
from .server import PlcServer
from .server_security import (
    ServerSecurity,
    parse_endpoints,
    secure_server,
    server_security_from_env,
)
from .tagmap import Role, TagMap, required_role
from .users import UserDirectory

__all__ = [
    "ClientSecurity", "LinkStatus", "OpcUaBridge", "Pki", "PlantLink", "PlcServer", "Role", "SecurityError",
    "ServerSecurity", "TagMap", "UserDirectory", "browse", "create_certificate", "parse_endpoints", "required_role", "run_plc_sim",
    "secure_server", "server_security_from_env",
]

"""The operator's page and REST API, served by the coordinator (docs/operator-page.md).

``create_app(coordinator)`` wires a FastAPI app to a live ``Coordinator``;
``WebServer`` runs it with uvicorn as one task of the coordinator's task group.
"""

from central.web.app import create_app
from central.web.server import WebServer

__all__ = ["WebServer", "create_app"]

"""`vmfault serve`: a live dashboard of a campaign in the browser, on 127.0.0.1.

`LiveServer(dbs)` serves one campaign database (or two, compared) read-only, with a token
in its URL (`vmfault.serve.server`); `create_app` is the ASGI application behind it
(`vmfault.serve.app`): pages rendered by the report's own section functions
(`vmfault.serve.pages`), the JSON API, and server-sent events driven by changes to the
database (`vmfault.serve.watch`), with the campaign's speed and workers
(`vmfault.serve.activity`).
"""

from vmfault.serve.activity import Activity, CampaignState, campaign_activity
from vmfault.serve.app import create_app
from vmfault.serve.server import LiveServer
from vmfault.serve.watch import CampaignWatch, Snapshot

__all__ = [
    "Activity",
    "CampaignState",
    "CampaignWatch",
    "LiveServer",
    "Snapshot",
    "campaign_activity",
    "create_app",
]

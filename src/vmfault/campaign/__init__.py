"""Campaigns: campaign files, the experiment plan and sample sizes."""

from vmfault.campaign.planner import (
    CampaignPlan,
    PlannedExperiment,
    Stratum,
    plan_campaign,
    sample_size,
    should_stop,
    stratum_converged,
)
from vmfault.campaign.spec import (
    CampaignSection,
    CampaignSpec,
    FaultFamily,
    GuestSection,
    campaign_json_schema,
    load_campaign,
)

__all__ = [
    "CampaignPlan",
    "CampaignSection",
    "CampaignSpec",
    "FaultFamily",
    "GuestSection",
    "PlannedExperiment",
    "Stratum",
    "campaign_json_schema",
    "load_campaign",
    "plan_campaign",
    "sample_size",
    "should_stop",
    "stratum_converged",
]

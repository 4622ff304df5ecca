"""Configuration models: every key a user may write, with its default and its checks.

Split by what they configure: `base` (strict models, paths, pipeline, targets, inputs, state),
`sources`, `destinations`, `operations` (schedules, alerts, reports, backfill) and `app` (the whole
file). Each source and destination type has its own model; `type` picks it. Unknown keys are errors.
Paths marked `RelPath` are resolved against the config file's folder (see `config.loader`).
"""

from config.models.app import (  # noqa: F401
    AppConfig,
)
from config.models.base import (  # noqa: F401
    DEFAULT_STAGES,
    Delimiter,
    InputsConfig,
    PipelineConfig,
    QualificationConfig,
    RelPath,
    StageConfig,
    StateConfig,
    StrictModel,
    TargetsConfig,
    after_stage_problem,
    product_mix_problem,
    stage_map_problems,
)
from config.models.destinations import (  # noqa: F401
    DestinationConfig,
    FileDestinationConfig,
    OneDriveDestinationConfig,
    onedrive_path_problems,
)
from config.models.finance import (  # noqa: F401
    FiscalCalendarConfig,
    SourceRates,
)
from config.models.operations import (  # noqa: F401
    BackfillConfig,
    NotifyConfig,
    NotifyEvent,
    ReportConfig,
    ReportFilterConfig,
    ScheduleConfig,
)
from config.models.sources import (  # noqa: F401
    HUBSPOT_DEFAULT_FIELDS,
    HUBSPOT_FIXED_FIELDS,
    CsvSourceConfig,
    ExcelSourceConfig,
    HubSpotSourceConfig,
    ReadLimits,
    SalesforceSourceConfig,
    SourceConfig,
    StageHistoryFileConfig,
    TableauSourceConfig,
)

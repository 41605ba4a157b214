from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFamily(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FAMILY_UNSPECIFIED: _ClassVar[ModelFamily]
    MODEL_FAMILY_INSTANCE: _ClassVar[ModelFamily]
    MODEL_FAMILY_SEMANTIC: _ClassVar[ModelFamily]
MODEL_FAMILY_UNSPECIFIED: ModelFamily
MODEL_FAMILY_INSTANCE: ModelFamily
MODEL_FAMILY_SEMANTIC: ModelFamily

class SessionSpec(_message.Message):
    __slots__ = ("microscope_id", "sample", "pixel_size_nm", "frame_rate_hz", "dose_rate_ions_cm2_s", "model_family", "search_range_nm", "memory_frames", "dpa_per_ion_cm2", "size_weight", "model_name")
    MICROSCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SIZE_NM_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DOSE_RATE_IONS_CM2_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FAMILY_FIELD_NUMBER: _ClassVar[int]
    SEARCH_RANGE_NM_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DPA_PER_ION_CM2_FIELD_NUMBER: _ClassVar[int]
    SIZE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    microscope_id: str
    sample: str
    pixel_size_nm: float
    frame_rate_hz: float
    dose_rate_ions_cm2_s: float
    model_family: ModelFamily
    search_range_nm: float
    memory_frames: int
    dpa_per_ion_cm2: float
    size_weight: float
    model_name: str
    def __init__(self, microscope_id: _Optional[str] = ..., sample: _Optional[str] = ..., pixel_size_nm: _Optional[float] = ..., frame_rate_hz: _Optional[float] = ..., dose_rate_ions_cm2_s: _Optional[float] = ..., model_family: _Optional[_Union[ModelFamily, str]] = ..., search_range_nm: _Optional[float] = ..., memory_frames: _Optional[int] = ..., dpa_per_ion_cm2: _Optional[float] = ..., size_weight: _Optional[float] = ..., model_name: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "spec", "model_name", "model_version", "opened_at_unix_s", "closed", "frames_stored", "last_frame_index", "search_range_nm", "memory_frames", "shadow_model_version", "shadow_fraction", "reads_loop_table")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_STORED_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEARCH_RANGE_NM_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    READS_LOOP_TABLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: SessionSpec
    model_name: str
    model_version: str
    opened_at_unix_s: float
    closed: bool
    frames_stored: int
    last_frame_index: int
    search_range_nm: float
    memory_frames: int
    shadow_model_version: str
    shadow_fraction: float
    reads_loop_table: bool
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[SessionSpec, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., opened_at_unix_s: _Optional[float] = ..., closed: _Optional[bool] = ..., frames_stored: _Optional[int] = ..., last_frame_index: _Optional[int] = ..., search_range_nm: _Optional[float] = ..., memory_frames: _Optional[int] = ..., shadow_model_version: _Optional[str] = ..., shadow_fraction: _Optional[float] = ..., reads_loop_table: _Optional[bool] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("include_closed",)
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    include_closed: bool
    def __init__(self, include_closed: _Optional[bool] = ...) -> None: ...

class ListSessionsReply(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x_px", "y_px", "width_px", "height_px")
    X_PX_FIELD_NUMBER: _ClassVar[int]
    Y_PX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_PX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_PX_FIELD_NUMBER: _ClassVar[int]
    x_px: float
    y_px: float
    width_px: float
    height_px: float
    def __init__(self, x_px: _Optional[float] = ..., y_px: _Optional[float] = ..., width_px: _Optional[float] = ..., height_px: _Optional[float] = ...) -> None: ...

class Loop(_message.Message):
    __slots__ = ("score", "x_px", "y_px", "major_px", "minor_px", "angle_deg", "area_px", "bbox")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    X_PX_FIELD_NUMBER: _ClassVar[int]
    Y_PX_FIELD_NUMBER: _ClassVar[int]
    MAJOR_PX_FIELD_NUMBER: _ClassVar[int]
    MINOR_PX_FIELD_NUMBER: _ClassVar[int]
    ANGLE_DEG_FIELD_NUMBER: _ClassVar[int]
    AREA_PX_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    score: float
    x_px: float
    y_px: float
    major_px: float
    minor_px: float
    angle_deg: float
    area_px: float
    bbox: BoundingBox
    def __init__(self, score: _Optional[float] = ..., x_px: _Optional[float] = ..., y_px: _Optional[float] = ..., major_px: _Optional[float] = ..., minor_px: _Optional[float] = ..., angle_deg: _Optional[float] = ..., area_px: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ...) -> None: ...

class FrameDetections(_message.Message):
    __slots__ = ("session_id", "frame_index", "timestamp_s", "model_name", "model_version", "width_px", "height_px", "loops", "latency_s", "shadow", "preview", "loop_table")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_PX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_PX_FIELD_NUMBER: _ClassVar[int]
    LOOPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    LOOP_TABLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame_index: int
    timestamp_s: float
    model_name: str
    model_version: str
    width_px: int
    height_px: int
    loops: _containers.RepeatedCompositeFieldContainer[Loop]
    latency_s: float
    shadow: ShadowAgreement
    preview: Preview
    loop_table: bytes
    def __init__(self, session_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., timestamp_s: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., width_px: _Optional[int] = ..., height_px: _Optional[int] = ..., loops: _Optional[_Iterable[_Union[Loop, _Mapping]]] = ..., latency_s: _Optional[float] = ..., shadow: _Optional[_Union[ShadowAgreement, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., loop_table: _Optional[bytes] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("media_type", "data", "width_px", "height_px")
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_PX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_PX_FIELD_NUMBER: _ClassVar[int]
    media_type: str
    data: bytes
    width_px: int
    height_px: int
    def __init__(self, media_type: _Optional[str] = ..., data: _Optional[bytes] = ..., width_px: _Optional[int] = ..., height_px: _Optional[int] = ...) -> None: ...

class ShadowAgreement(_message.Message):
    __slots__ = ("model_version", "candidate_loop_count", "matched", "f1", "latency_s")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LOOP_COUNT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    candidate_loop_count: int
    matched: int
    f1: float
    latency_s: float
    def __init__(self, model_version: _Optional[str] = ..., candidate_loop_count: _Optional[int] = ..., matched: _Optional[int] = ..., f1: _Optional[float] = ..., latency_s: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("session_id", "frame_index", "accepted", "duplicate", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame_index: int
    accepted: bool
    duplicate: bool
    error: str
    def __init__(self, session_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class FrameStatistics(_message.Message):
    __slots__ = ("frame_index", "timestamp_s", "fluence_ions_cm2", "loop_count", "density_per_um2", "mean_major_nm", "mean_minor_nm", "foreground_percent", "drift_x_px", "drift_y_px", "drift_x_nm", "drift_y_nm", "linked_count", "dose_dpa", "drift_sigma_x_px", "drift_sigma_y_px", "drift_sigma_x_nm", "drift_sigma_y_nm", "drift_matched_count")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    FLUENCE_IONS_CM2_FIELD_NUMBER: _ClassVar[int]
    LOOP_COUNT_FIELD_NUMBER: _ClassVar[int]
    DENSITY_PER_UM2_FIELD_NUMBER: _ClassVar[int]
    MEAN_MAJOR_NM_FIELD_NUMBER: _ClassVar[int]
    MEAN_MINOR_NM_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_X_PX_FIELD_NUMBER: _ClassVar[int]
    DRIFT_Y_PX_FIELD_NUMBER: _ClassVar[int]
    DRIFT_X_NM_FIELD_NUMBER: _ClassVar[int]
    DRIFT_Y_NM_FIELD_NUMBER: _ClassVar[int]
    LINKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOSE_DPA_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SIGMA_X_PX_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SIGMA_Y_PX_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SIGMA_X_NM_FIELD_NUMBER: _ClassVar[int]
    DRIFT_SIGMA_Y_NM_FIELD_NUMBER: _ClassVar[int]
    DRIFT_MATCHED_COUNT_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    timestamp_s: float
    fluence_ions_cm2: float
    loop_count: int
    density_per_um2: float
    mean_major_nm: float
    mean_minor_nm: float
    foreground_percent: float
    drift_x_px: float
    drift_y_px: float
    drift_x_nm: float
    drift_y_nm: float
    linked_count: int
    dose_dpa: float
    drift_sigma_x_px: float
    drift_sigma_y_px: float
    drift_sigma_x_nm: float
    drift_sigma_y_nm: float
    drift_matched_count: int
    def __init__(self, frame_index: _Optional[int] = ..., timestamp_s: _Optional[float] = ..., fluence_ions_cm2: _Optional[float] = ..., loop_count: _Optional[int] = ..., density_per_um2: _Optional[float] = ..., mean_major_nm: _Optional[float] = ..., mean_minor_nm: _Optional[float] = ..., foreground_percent: _Optional[float] = ..., drift_x_px: _Optional[float] = ..., drift_y_px: _Optional[float] = ..., drift_x_nm: _Optional[float] = ..., drift_y_nm: _Optional[float] = ..., linked_count: _Optional[int] = ..., dose_dpa: _Optional[float] = ..., drift_sigma_x_px: _Optional[float] = ..., drift_sigma_y_px: _Optional[float] = ..., drift_sigma_x_nm: _Optional[float] = ..., drift_sigma_y_nm: _Optional[float] = ..., drift_matched_count: _Optional[int] = ...) -> None: ...

class StatisticsRequest(_message.Message):
    __slots__ = ("session_id", "from_frame", "to_frame")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FRAME_FIELD_NUMBER: _ClassVar[int]
    TO_FRAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_frame: int
    to_frame: int
    def __init__(self, session_id: _Optional[str] = ..., from_frame: _Optional[int] = ..., to_frame: _Optional[int] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("frames", "mean_loop_count", "mean_density_per_um2", "mean_major_nm", "mean_minor_nm", "tracks", "duration_s", "fluence_ions_cm2", "drift_rate_x_px_per_frame", "drift_rate_y_px_per_frame", "drift_rate_x_nm_per_s", "drift_rate_y_nm_per_s", "mean_lifetime_s", "mean_free_path_nm", "mean_growth_rate_nm_s", "nucleation_rate_per_um2_s", "nucleation_per_um2_per_ion_cm2", "loss_rate_per_um2_s", "coalescence_events", "dose_dpa")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOOP_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_DENSITY_PER_UM2_FIELD_NUMBER: _ClassVar[int]
    MEAN_MAJOR_NM_FIELD_NUMBER: _ClassVar[int]
    MEAN_MINOR_NM_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FLUENCE_IONS_CM2_FIELD_NUMBER: _ClassVar[int]
    DRIFT_RATE_X_PX_PER_FRAME_FIELD_NUMBER: _ClassVar[int]
    DRIFT_RATE_Y_PX_PER_FRAME_FIELD_NUMBER: _ClassVar[int]
    DRIFT_RATE_X_NM_PER_S_FIELD_NUMBER: _ClassVar[int]
    DRIFT_RATE_Y_NM_PER_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_LIFETIME_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_FREE_PATH_NM_FIELD_NUMBER: _ClassVar[int]
    MEAN_GROWTH_RATE_NM_S_FIELD_NUMBER: _ClassVar[int]
    NUCLEATION_RATE_PER_UM2_S_FIELD_NUMBER: _ClassVar[int]
    NUCLEATION_PER_UM2_PER_ION_CM2_FIELD_NUMBER: _ClassVar[int]
    LOSS_RATE_PER_UM2_S_FIELD_NUMBER: _ClassVar[int]
    COALESCENCE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DOSE_DPA_FIELD_NUMBER: _ClassVar[int]
    frames: int
    mean_loop_count: float
    mean_density_per_um2: float
    mean_major_nm: float
    mean_minor_nm: float
    tracks: int
    duration_s: float
    fluence_ions_cm2: float
    drift_rate_x_px_per_frame: float
    drift_rate_y_px_per_frame: float
    drift_rate_x_nm_per_s: float
    drift_rate_y_nm_per_s: float
    mean_lifetime_s: float
    mean_free_path_nm: float
    mean_growth_rate_nm_s: float
    nucleation_rate_per_um2_s: float
    nucleation_per_um2_per_ion_cm2: float
    loss_rate_per_um2_s: float
    coalescence_events: int
    dose_dpa: float
    def __init__(self, frames: _Optional[int] = ..., mean_loop_count: _Optional[float] = ..., mean_density_per_um2: _Optional[float] = ..., mean_major_nm: _Optional[float] = ..., mean_minor_nm: _Optional[float] = ..., tracks: _Optional[int] = ..., duration_s: _Optional[float] = ..., fluence_ions_cm2: _Optional[float] = ..., drift_rate_x_px_per_frame: _Optional[float] = ..., drift_rate_y_px_per_frame: _Optional[float] = ..., drift_rate_x_nm_per_s: _Optional[float] = ..., drift_rate_y_nm_per_s: _Optional[float] = ..., mean_lifetime_s: _Optional[float] = ..., mean_free_path_nm: _Optional[float] = ..., mean_growth_rate_nm_s: _Optional[float] = ..., nucleation_rate_per_um2_s: _Optional[float] = ..., nucleation_per_um2_per_ion_cm2: _Optional[float] = ..., loss_rate_per_um2_s: _Optional[float] = ..., coalescence_events: _Optional[int] = ..., dose_dpa: _Optional[float] = ...) -> None: ...

class StatisticsReply(_message.Message):
    __slots__ = ("session_id", "frames", "summary", "window")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frames: _containers.RepeatedCompositeFieldContainer[FrameStatistics]
    summary: SessionSummary
    window: SessionSummary
    def __init__(self, session_id: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[FrameStatistics, _Mapping]]] = ..., summary: _Optional[_Union[SessionSummary, _Mapping]] = ..., window: _Optional[_Union[SessionSummary, _Mapping]] = ...) -> None: ...

class TrackPoint(_message.Message):
    __slots__ = ("frame_index", "x_px", "y_px", "major_nm", "minor_nm", "timestamp_s", "x_corrected_px", "y_corrected_px")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    X_PX_FIELD_NUMBER: _ClassVar[int]
    Y_PX_FIELD_NUMBER: _ClassVar[int]
    MAJOR_NM_FIELD_NUMBER: _ClassVar[int]
    MINOR_NM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    X_CORRECTED_PX_FIELD_NUMBER: _ClassVar[int]
    Y_CORRECTED_PX_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    x_px: float
    y_px: float
    major_nm: float
    minor_nm: float
    timestamp_s: float
    x_corrected_px: float
    y_corrected_px: float
    def __init__(self, frame_index: _Optional[int] = ..., x_px: _Optional[float] = ..., y_px: _Optional[float] = ..., major_nm: _Optional[float] = ..., minor_nm: _Optional[float] = ..., timestamp_s: _Optional[float] = ..., x_corrected_px: _Optional[float] = ..., y_corrected_px: _Optional[float] = ...) -> None: ...

class Track(_message.Message):
    __slots__ = ("track_id", "birth_frame", "death_frame", "points", "growth_rate_nm_s", "lifetime_s", "displacement_nm", "length", "growth_rate_ci95_nm_s")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    BIRTH_FRAME_FIELD_NUMBER: _ClassVar[int]
    DEATH_FRAME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    GROWTH_RATE_NM_S_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_S_FIELD_NUMBER: _ClassVar[int]
    DISPLACEMENT_NM_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    GROWTH_RATE_CI95_NM_S_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    birth_frame: int
    death_frame: int
    points: _containers.RepeatedCompositeFieldContainer[TrackPoint]
    growth_rate_nm_s: float
    lifetime_s: float
    displacement_nm: float
    length: int
    growth_rate_ci95_nm_s: float
    def __init__(self, track_id: _Optional[int] = ..., birth_frame: _Optional[int] = ..., death_frame: _Optional[int] = ..., points: _Optional[_Iterable[_Union[TrackPoint, _Mapping]]] = ..., growth_rate_nm_s: _Optional[float] = ..., lifetime_s: _Optional[float] = ..., displacement_nm: _Optional[float] = ..., length: _Optional[int] = ..., growth_rate_ci95_nm_s: _Optional[float] = ...) -> None: ...

class TracksRequest(_message.Message):
    __slots__ = ("session_id", "min_length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    min_length: int
    def __init__(self, session_id: _Optional[str] = ..., min_length: _Optional[int] = ...) -> None: ...

class TracksReply(_message.Message):
    __slots__ = ("session_id", "tracks")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    def __init__(self, session_id: _Optional[str] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("session_id", "join_fragments")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FRAGMENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    join_fragments: bool
    def __init__(self, session_id: _Optional[str] = ..., join_fragments: _Optional[bool] = ...) -> None: ...

class ArmStatisticsRequest(_message.Message):
    __slots__ = ("pipeline", "since_unix_s")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    since_unix_s: float
    def __init__(self, pipeline: _Optional[str] = ..., since_unix_s: _Optional[float] = ...) -> None: ...

class ArmStatistics(_message.Message):
    __slots__ = ("arm_version", "sessions", "frames", "loops_per_frame", "mean_major_nm", "latency_p50_s", "shadow_f1", "shadow_frames")
    ARM_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    LOOPS_PER_FRAME_FIELD_NUMBER: _ClassVar[int]
    MEAN_MAJOR_NM_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_S_FIELD_NUMBER: _ClassVar[int]
    SHADOW_F1_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRAMES_FIELD_NUMBER: _ClassVar[int]
    arm_version: str
    sessions: int
    frames: int
    loops_per_frame: float
    mean_major_nm: float
    latency_p50_s: float
    shadow_f1: float
    shadow_frames: int
    def __init__(self, arm_version: _Optional[str] = ..., sessions: _Optional[int] = ..., frames: _Optional[int] = ..., loops_per_frame: _Optional[float] = ..., mean_major_nm: _Optional[float] = ..., latency_p50_s: _Optional[float] = ..., shadow_f1: _Optional[float] = ..., shadow_frames: _Optional[int] = ...) -> None: ...

class ArmStatisticsReply(_message.Message):
    __slots__ = ("arms",)
    ARMS_FIELD_NUMBER: _ClassVar[int]
    arms: _containers.RepeatedCompositeFieldContainer[ArmStatistics]
    def __init__(self, arms: _Optional[_Iterable[_Union[ArmStatistics, _Mapping]]] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyReply(_message.Message):
    __slots__ = ("policy_json", "loaded_at_unix_s")
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    policy_json: str
    loaded_at_unix_s: float
    def __init__(self, policy_json: _Optional[str] = ..., loaded_at_unix_s: _Optional[float] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("session_id", "from_frame")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FRAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_frame: int
    def __init__(self, session_id: _Optional[str] = ..., from_frame: _Optional[int] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("session_id", "name", "media_type", "data", "last")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    name: str
    media_type: str
    data: bytes
    last: bool
    def __init__(self, session_id: _Optional[str] = ..., name: _Optional[str] = ..., media_type: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientFrame(_message.Message):
    __slots__ = ("hello", "protocol", "abort")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    protocol: bytes
    abort: ClientAbort
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., protocol: _Optional[bytes] = ..., abort: _Optional[_Union[ClientAbort, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("client_id", "public_key", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    public_key: bytes
    signature: bytes
    def __init__(self, client_id: _Optional[int] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ClientAbort(_message.Message):
    __slots__ = ("round_id", "reason", "detail")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    reason: str
    detail: str
    def __init__(self, round_id: _Optional[int] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("challenge", "welcome", "task", "protocol", "round_end", "reject", "queued", "session_task")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ROUND_END_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SESSION_TASK_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    welcome: Welcome
    task: Task
    protocol: bytes
    round_end: RoundEnd
    reject: Reject
    queued: Queued
    session_task: SessionTask
    def __init__(self, challenge: _Optional[_Union[Challenge, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., protocol: _Optional[bytes] = ..., round_end: _Optional[_Union[RoundEnd, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., session_task: _Optional[_Union[SessionTask, _Mapping]] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("client_id", "max_message_bytes")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    max_message_bytes: int
    def __init__(self, client_id: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("round_id", "round_config", "model", "step")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    round_config: bytes
    model: bytes
    step: int
    def __init__(self, round_id: _Optional[int] = ..., round_config: _Optional[bytes] = ..., model: _Optional[bytes] = ..., step: _Optional[int] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("round_id", "position", "window")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    position: int
    window: int
    def __init__(self, round_id: _Optional[int] = ..., position: _Optional[int] = ..., window: _Optional[int] = ...) -> None: ...

class SessionTask(_message.Message):
    __slots__ = ("round_id", "round_task", "model", "step")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    round_task: bytes
    model: bytes
    step: int
    def __init__(self, round_id: _Optional[int] = ..., round_task: _Optional[bytes] = ..., model: _Optional[bytes] = ..., step: _Optional[int] = ...) -> None: ...

class RoundEnd(_message.Message):
    __slots__ = ("round_id", "completed", "included", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    completed: bool
    included: bool
    reason: str
    def __init__(self, round_id: _Optional[int] = ..., completed: bool = ..., included: bool = ..., reason: _Optional[str] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("reason", "retryable")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retryable: bool
    def __init__(self, reason: _Optional[str] = ..., retryable: bool = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextInfo(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Info(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedCompositeFieldContainer[TextInfo]
    def __init__(self, texts: _Optional[_Iterable[_Union[TextInfo, _Mapping]]] = ...) -> None: ...

class FeatureRequest(_message.Message):
    __slots__ = ("image", "query_sign", "info", "featureids", "appid", "sub_lib")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUERY_SIGN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    FEATUREIDS_FIELD_NUMBER: _ClassVar[int]
    APPID_FIELD_NUMBER: _ClassVar[int]
    SUB_LIB_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    query_sign: str
    info: Info
    featureids: str
    appid: str
    sub_lib: str
    def __init__(self, image: _Optional[bytes] = ..., query_sign: _Optional[str] = ..., info: _Optional[_Union[Info, _Mapping]] = ..., featureids: _Optional[str] = ..., appid: _Optional[str] = ..., sub_lib: _Optional[str] = ...) -> None: ...

class FeatureData(_message.Message):
    __slots__ = ("fea_id", "fea_data")
    FEA_ID_FIELD_NUMBER: _ClassVar[int]
    FEA_DATA_FIELD_NUMBER: _ClassVar[int]
    fea_id: int
    fea_data: bytes
    def __init__(self, fea_id: _Optional[int] = ..., fea_data: _Optional[bytes] = ...) -> None: ...

class FeatureResponse(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureData]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureData, _Mapping]]] = ...) -> None: ...

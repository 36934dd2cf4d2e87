"""Feature service, port 8120: ``/GeneralClassifyService/classify``.

The JSON body's ``data`` is a base64 ``FeatureRequest``; the reply's ``result`` is a base64
``FeatureResponse``. The descriptor served here is the very vector search uses, so a client can
keep its own copy, or compare two images without storing either.
"""

from __future__ import annotations

import struct

from aiohttp import web
from google.protobuf.message import DecodeError

from same_search.contsign import ContSign
from same_search.errors import bad_request
from same_search.proto import imgfeature_pb2
from same_search.routes.auth import check_token, presented_token
from same_search.routes.envelope import APPID, LOGID, ok, read_body
from same_search.routes.fields import Fields, decode_base64, encode_base64, is_decimal, parse_json_object
from same_search.services import SERVICES
from same_search.wire import CLASSIFY as PATH
from same_search.wire import FEA_CONTSIGN, FEA_DESCRIPTOR, FEA_MODEL
from same_search.wire import FEATURE_OUTPUTS as ALL_FEATURES


def wanted_features(spec: str) -> list[int]:
    """``""`` means every feature; otherwise a comma-separated list of known fea_ids."""
    if not spec.strip():
        return list(ALL_FEATURES)
    wanted = []
    for part in spec.split(","):
        part = part.strip()
        if not is_decimal(part) or int(part) not in ALL_FEATURES:
            raise bad_request(
                f"featureids: unknown feature {part!r}; known: {', '.join(map(str, ALL_FEATURES))}"
            )
        wanted.append(int(part))
    return wanted


async def classify(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    fields = Fields(parse_json_object(await read_body(request)))
    request[LOGID] = fields.data.get("logid", "-")
    fields.check_common()
    appid = fields.optional_str("appid")
    request[APPID] = appid or "-"
    check_token(services.cfg.auth, appid, presented_token(request, fields.data))
    proto = imgfeature_pb2.FeatureRequest()
    try:
        proto.ParseFromString(decode_base64(fields.data.get("data"), "data"))
    except DecodeError as exc:
        raise bad_request(f"data is not a serialised FeatureRequest: {exc}") from exc
    wanted = wanted_features(proto.featureids)
    image = proto.image
    vector = await services.embed.embed_image(image)
    info = services.embed.info
    contsign = ContSign.of_image(image)
    values = {
        FEA_DESCRIPTOR: vector.astype("<f4").tobytes(),
        FEA_CONTSIGN: struct.pack("<II", contsign.sign1, contsign.sign2),
        FEA_MODEL: f"{info.model_id}:{info.fingerprint}:{info.dim}".encode(),
    }
    response = imgfeature_pb2.FeatureResponse()
    for fea_id in wanted:
        response.features.add(fea_id=fea_id, fea_data=values[fea_id])
    return ok(result=encode_base64(response.SerializeToString()))


def add_routes(app: web.Application) -> None:
    """Register the feature route."""
    app.router.add_post(PATH, classify)

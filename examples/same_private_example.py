#!/usr/bin/env python3
"""The spec's feature-service sample client (same_private_example.py), ported to Python 3.

Usage: python examples/same_private_example.py calfeature_remote query.jpg 127.0.0.1:8120 [featureids]
"""

import base64
import json
import logging
import sys
import time
import urllib.request

from same_search.proto import imgfeature_pb2

logger = logging.getLogger()


class CalFeatureError(Exception):
    """when call remote server error"""


def calfeature_idlapi_remote(serverurl, imagedata, infos, logid=0, featureids=""):
    """Send one image to the feature service and return {fea_id: fea_data}."""

    def _createprotobufdata(imagestr, info):
        """create protobuf from image and info"""
        proto_data = imgfeature_pb2.FeatureRequest()
        proto_data.image = imagestr
        proto_data.query_sign = "0,0"
        proto_data.featureids = featureids

        def addinfo(key, value):
            infoele = proto_data.info.texts.add()
            infoele.key = key
            infoele.value = value

        if info is not None:
            for key, value in info.items():
                addinfo(key, value)
        return proto_data.SerializeToString()

    protodata = base64.b64encode(_createprotobufdata(imagedata, infos)).decode()
    req_json = {
        "appid": "123456",
        "logid": logid,
        "format": "json",
        "from": "test-python",
        "cmdid": "123",
        "clientip": "0.0.0.0",
        "data": protodata,
    }
    conn = urllib.request.urlopen(serverurl, data=json.dumps(req_json).encode())
    result = json.loads(conn.read())
    if result["err_no"] != 0:
        errorinfo = "%s:%s" % (result["err_no"], result["err_msg"])
        logger.warning("got error from server:%s", errorinfo)
        raise CalFeatureError(errorinfo)
    proto_result = imgfeature_pb2.FeatureResponse()
    proto_result.ParseFromString(base64.b64decode(result["result"]))
    return {fea.fea_id: fea.fea_data for fea in proto_result.features}


def calfeature_remote(filename, feaaddr, featureids=""):
    feaserverurl = "http://%s/GeneralClassifyService/classify" % feaaddr
    params = {"detect": "1", "usedb": "0"}
    imagedata = open(filename, "rb").read()
    start = time.time()
    features = calfeature_idlapi_remote(feaserverurl, imagedata, params, featureids=featureids)
    print("time cost: %.2f ms" % ((time.time() - start) * 1000))
    for feaname in features:
        print("-------------" * 5)
        print(feaname, features[feaname][:16], len(features[feaname]))


def main():
    calfeature_remote("query.jpg", "127.0.0.1:8120", "")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        func = getattr(sys.modules[__name__], sys.argv[1])
        func(*sys.argv[2:])
    else:
        print("tools.py command", file=sys.stderr)

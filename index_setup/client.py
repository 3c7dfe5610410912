"""Elasticsearch clients built from the settings, and error messages that never carry credentials."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import elastic_transport
import elasticsearch
import orjson
from elasticsearch import AsyncElasticsearch, Elasticsearch
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer
from scrapy.settings import Settings

logger = logging.getLogger(__name__)


class ClusterError(Exception):
    """Elasticsearch cannot be used (unreachable, credentials refused, certificate untrusted)."""


def es_urls(settings: Settings) -> list[str]:
    """The cluster's node URLs: ES_URL (comma-separated), else the local node of `imgsearch es start`."""
    configured = settings.get("ES_URL")
    if configured:
        return [u.strip() for u in str(configured).split(",") if u.strip()]
    return [f"http://127.0.0.1:{settings.getint('IMGSEARCH_ES_PORT')}"]


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def display_url(settings: Settings) -> str:
    return ", ".join(redact_url(u) for u in es_urls(settings))


def _secrets(settings: Settings) -> list[str]:
    values = [settings.get("ES_PASSWORD"), settings.get("ES_API_KEY")]
    values += [urlsplit(u).password for u in es_urls(settings)]
    return [str(v) for v in values if v]


def redact(text: str, settings: Settings) -> str:
    """Remove every configured secret from a message before it is logged or shown."""
    for secret in _secrets(settings):
        text = text.replace(secret, "***")
    return text


class _Orjson:
    """Request bodies through orjson: an image document's 512 floats take about 10 us instead of about 230 us with
    the json module, and the async client serialises a whole bulk request on the thread that runs the crawl's
    event loop. What orjson refuses (a string with a lone surrogate, an int past 64 bits, a non-string key) goes
    through the json module as before, so no request fails that would have been sent. Responses stay with the
    json module: orjson's parser holds about 13 times a response's size at its peak (28 MB for a 2 MB scroll page
    of vectors), which would make an export's memory grow with its page size."""

    def json_dumps(self, data: Any) -> bytes:
        try:
            body = orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            return super().json_dumps(data)
        # A copy of its exact size: orjson's own bytes keep the allocation they grew in (about 128 kB for a 10 kB
        # document), and the bulk helpers hold a whole chunk of serialised documents at once.
        return bytes(memoryview(body))


class FastJsonSerializer(_Orjson, JsonSerializer):
    pass


class FastNdjsonSerializer(_Orjson, NdjsonSerializer):
    pass


def client_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "hosts": es_urls(settings),
        "request_timeout": settings.getfloat("ES_REQUEST_TIMEOUT"),
        "retry_on_timeout": True,
        "max_retries": 2,
        # The client uses them for the compatibility-mode media types too.
        "serializers": {FastJsonSerializer.mimetype: FastJsonSerializer(),
                        FastNdjsonSerializer.mimetype: FastNdjsonSerializer()},
    }
    if settings.get("ES_API_KEY"):
        options["api_key"] = settings.get("ES_API_KEY")
    elif settings.get("ES_USERNAME"):
        options["basic_auth"] = (settings.get("ES_USERNAME"), settings.get("ES_PASSWORD") or "")
    if settings.get("ES_CA_CERTS"):
        options["ca_certs"] = settings.get("ES_CA_CERTS")
    if not settings.getbool("ES_VERIFY_CERTS", True):
        # Our warning, once per client, replaces the transport's and urllib3's (one per connection or request).
        options.update(verify_certs=False, ssl_show_warn=False)
        logger.warning("ES_VERIFY_CERTS=false: the TLS certificate of Elasticsearch at %s is not checked; anyone "
                       "on the way can read and change the traffic, credentials included", display_url(settings))
    return options


def es_client(settings: Settings) -> Elasticsearch:
    return Elasticsearch(**client_options(settings))


def async_es_client(settings: Settings) -> AsyncElasticsearch:
    return AsyncElasticsearch(**client_options(settings))


def describe_error(exc: BaseException, settings: Settings) -> str:
    """One line for the user: what went wrong with which cluster, never the credentials."""
    where = display_url(settings)
    if isinstance(exc, elasticsearch.AuthenticationException):
        text = f"Elasticsearch at {where} refused the credentials (401): check ES_API_KEY or ES_USERNAME/ES_PASSWORD"
    elif isinstance(exc, elasticsearch.AuthorizationException):
        text = f"Elasticsearch at {where} denied the request (403): the user lacks a privilege"
    elif isinstance(exc, elastic_transport.TlsError) and settings.get("ES_CA_CERTS") and not os.path.isfile(
            settings.get("ES_CA_CERTS")):
        text = f"TLS to Elasticsearch at {where} failed: ES_CA_CERTS names no file ({settings.get('ES_CA_CERTS')})"
    elif isinstance(exc, elastic_transport.TlsError):
        text = (f"TLS to Elasticsearch at {where} failed: the certificate is not trusted "
                f"(set ES_CA_CERTS to the CA that signed it)")
    elif isinstance(exc, elastic_transport.ConnectionTimeout):
        text = f"Elasticsearch at {where} did not answer in time"
    elif isinstance(exc, elastic_transport.ConnectionError):
        hint = "" if settings.get("ES_URL") else " (start it with `imgsearch es start`)"
        text = f"Elasticsearch is unreachable at {where}{hint}"
    elif isinstance(exc, elasticsearch.ApiError):
        text = f"Elasticsearch at {where} answered {exc.meta.status}: {exc.message}"
    else:
        text = f"Elasticsearch at {where}: {type(exc).__name__}: {exc}"
    return redact(text, settings)


def cluster_info(client: Elasticsearch, settings: Settings) -> dict[str, Any]:
    """Health and version of the cluster (through `_cluster/health` and `_nodes/_local`, which every 8.x has).

    Raises ClusterError with a one-line message when the cluster cannot be used.
    """
    try:
        health = client.options(request_timeout=10).cluster.health()
        nodes = client.options(request_timeout=10).nodes.info(node_id="_local", metric="_none")
    except (elastic_transport.TransportError, elasticsearch.ApiError) as exc:
        raise ClusterError(describe_error(exc, settings)) from exc
    versions = [n.get("version") for n in nodes.body.get("nodes", {}).values()]
    return {
        "url": display_url(settings),
        "cluster_name": health["cluster_name"],
        "status": health["status"],
        "number_of_nodes": health["number_of_nodes"],
        "version": versions[0] if versions else None,
    }


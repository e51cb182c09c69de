"""Reaching S3: the AWS variables the SDKs and GDAL read (handed to the executors, which do not
inherit the driver's environment), the endpoint they name, and a pyarrow client per endpoint and
region, asking AWS for a bucket's region where none is set. `storage` reads and writes s3://
locations with them.
"""

from __future__ import annotations

import functools
import os
from urllib.parse import urlsplit

from pyarrow import fs

# Variables the AWS SDKs and GDAL read for S3: what executors need to reach the same storage.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "AWS_NO_SIGN_REQUEST",
)


def endpoint_url() -> str | None:
    """The S3 endpoint the AWS variables name, if any (a local or compatible server)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def executor_environment() -> dict[str, str]:
    """The AWS variables set here, for `spark.executorEnv.*`: executors on other hosts do not
    inherit the driver's environment."""
    return {key: os.environ[key] for key in AWS_VARIABLES if key in os.environ}


def client(bucket: str) -> fs.S3FileSystem:
    """The client for a bucket: AWS_REGION's, or the bucket's own region asked from AWS (a
    client of the wrong region gets only redirects), or none for another endpoint."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = endpoint_url()
    if region is None and endpoint is None:
        region = _bucket_region(bucket)
    return _client(endpoint, region)


@functools.cache
def _bucket_region(bucket: str) -> str:
    return fs.resolve_s3_region(bucket)


# Attempts of each S3 request: the SDK's backoff over 10 attempts waits about 20 s in all, so a
# task rides out an endpoint that is gone for a few seconds (3, the default, give up within one).
S3_ATTEMPTS = 10


@functools.cache  # one client per process, endpoint and region: it holds a connection pool
def _client(endpoint: str | None, region: str | None) -> fs.S3FileSystem:
    # Delayed open: a file smaller than one part goes up in one PUT, not a three-request
    # multipart upload; a missing bucket is then reported at close, still in `storage.commit`.
    options: dict = {
        "allow_delayed_open": True,
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    }
    if endpoint:
        url = urlsplit(endpoint)
        options |= {"endpoint_override": url.netloc, "scheme": url.scheme or "https"}
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)

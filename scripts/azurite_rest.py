#!/usr/bin/env python3
"""A tiny Azure Storage REST client (Shared Key, standard library only) for driving Azurite in
scripts/e2e-prometheus.sh: create queues and containers, upload blobs, enqueue messages, read a
queue's approximate length. Not for production use: no retries, Azurite's path-style URLs only.

  azurite_rest.py --blob URL --queue URL create-queue NAME
  azurite_rest.py --blob URL --queue URL create-container NAME
  azurite_rest.py --blob URL --queue URL put-blob CONTAINER NAME FILE
  azurite_rest.py --blob URL --queue URL put-message QUEUE TEXT [--base64]
  azurite_rest.py --blob URL --queue URL queue-length QUEUE

URLs are the account endpoints, e.g. http://127.0.0.1:10001/devstoreaccount1.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request
from email.utils import formatdate
from xml.sax.saxutils import escape

# Azurite's published development account (not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-12-02"


def request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
            ok: tuple[int, ...] = (200, 201, 204)) -> urllib.response.addinfourl | None:
    headers = dict(headers or {})
    if method in ("PUT", "POST"):
        # urllib would add its own form Content-Type, which must be part of the signature.
        headers.setdefault("Content-Type", "application/octet-stream")
    headers["x-ms-date"] = formatdate(usegmt=True)
    headers["x-ms-version"] = VERSION
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    canon_headers = "".join(
        f"{k.lower()}:{v.strip()}\n" for k, v in sorted(headers.items(), key=lambda kv: kv[0].lower())
        if k.lower().startswith("x-ms-")
    )
    # Path-style (Azurite): the account appears once as the account and once in the path.
    canon_resource = f"/{ACCOUNT}{parsed.path}" + "".join(
        f"\n{k.lower()}:{','.join(sorted(v))}" for k, v in sorted(query.items())
    )
    length = str(len(body)) if body else ""
    string_to_sign = "\n".join([
        method, "", "", length, "", headers.get("Content-Type", ""), "", "", "", "", "", "",
    ]) + "\n" + canon_headers + canon_resource
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), string_to_sign.encode(), hashlib.sha256).digest())
    headers["Authorization"] = f"SharedKey {ACCOUNT}:{sig.decode()}"
    req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                 method=method, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code in ok:
            return None
        sys.exit(f"azurite_rest: {method} {url} -> {e.code} {e.read()[:300]!r}")
    return resp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blob", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("op", choices=["create-queue", "create-container", "put-blob", "put-message", "queue-length"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--base64", action="store_true")
    a = ap.parse_args()
    if a.op == "create-queue":
        request("PUT", f"{a.queue}/{a.args[0]}", ok=(201, 204))
    elif a.op == "create-container":
        request("PUT", f"{a.blob}/{a.args[0]}?restype=container", ok=(201, 409))
    elif a.op == "put-blob":
        with open(a.args[2], "rb") as f:
            data = f.read()
        request("PUT", f"{a.blob}/{a.args[0]}/{a.args[1]}", body=data,
                headers={"x-ms-blob-type": "BlockBlob", "Content-Type": "text/csv"})
    elif a.op == "put-message":
        text = a.args[1]
        if a.base64:
            text = base64.b64encode(text.encode()).decode()
        body = f"<QueueMessage><MessageText>{escape(text)}</MessageText></QueueMessage>".encode()
        request("POST", f"{a.queue}/{a.args[0]}/messages", body=body,
                headers={"Content-Type": "application/xml"})
    elif a.op == "queue-length":
        resp = request("GET", f"{a.queue}/{a.args[0]}?comp=metadata")
        print(resp.headers["x-ms-approximate-messages-count"] if resp else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())

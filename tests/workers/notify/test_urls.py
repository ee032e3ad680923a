"""The outbound URL policy: schemes, userinfo, non-public addresses, the allow-list."""

from __future__ import annotations

import pytest

from workers.notify.urls import UrlPolicy, UrlRefused, display_url, resolve_target

DEFAULT = UrlPolicy()
LOCAL = UrlPolicy(allow_http=True, allow_private=True)


@pytest.mark.parametrize(("url", "policy", "why"), [
    ("http://93.184.215.14/hook", DEFAULT, "scheme 'http' is not allowed"),
    ("ftp://93.184.215.14/hook", LOCAL, "scheme 'ftp'"),
    ("https://user:pw@93.184.215.14/", DEFAULT, "credentials"),
    ("https://user@93.184.215.14/", DEFAULT, "credentials"),
    ("https://127.0.0.1/", DEFAULT, "loopback"),
    ("https://localhost:8443/", DEFAULT, "loopback"),
    ("https://[::1]/", DEFAULT, "loopback"),
    ("https://[::ffff:127.0.0.1]/", DEFAULT, "loopback"),
    ("https://[::ffff:10.1.2.3]/", DEFAULT, "private"),
    ("https://10.0.0.5/", DEFAULT, "private"),
    ("https://192.168.1.1/", DEFAULT, "private"),
    ("https://172.16.0.1/", DEFAULT, "private"),
    ("https://100.64.0.1/", DEFAULT, "private"),
    ("https://[fd00::1]/", DEFAULT, "private"),
    ("https://2130706433/", DEFAULT, "loopback"),  # 127.0.0.1 written as one integer
    ("https://169.254.169.254/latest/meta-data/", DEFAULT, "link-local"),
    ("http://169.254.169.254/latest/meta-data/", LOCAL, "link-local"),
    ("https://[fe80::1]/", LOCAL, "link-local"),
    ("https://[::ffff:169.254.169.254]/", LOCAL, "link-local"),
    ("https://0.0.0.0/", LOCAL, "unspecified"),
    ("https://[::]/", LOCAL, "unspecified"),
    ("https://224.0.0.1/", LOCAL, "multicast"),
    ("https://240.0.0.1/", LOCAL, "reserved"),
    ("https://255.255.255.255/", LOCAL, "broadcast"),
    ("https://93.184.215.14:0/", DEFAULT, "port 0"),
    ("https://93.184.215.14:99999/", DEFAULT, "malformed"),
    ("https:///path", DEFAULT, "no host"),
    ("https://exa mple.com/", DEFAULT, "whitespace"),
    ("https://nonexistent.invalid/", DEFAULT, "does not resolve"),
    ("https://bücher.example/", DEFAULT, "punycode"),
    ("https://93.184.215.14/", UrlPolicy(allowed_hosts=("hooks.example.com",)), "allow-list"),
    ("https://evilexample.com/", UrlPolicy(allowed_hosts=("*.example.com",)), "allow-list"),
])
def test_refused(url: str, policy: UrlPolicy, why: str) -> None:
    with pytest.raises(UrlRefused, match=why):
        resolve_target(url, policy)


def test_allowed_urls_connect_to_the_checked_address() -> None:
    target = resolve_target("https://93.184.215.14:8443/hook?token=abc", DEFAULT)
    assert (target.url, target.host_header, target.address) == (
        "https://93.184.215.14:8443/hook?token=abc", "93.184.215.14:8443", "93.184.215.14")
    local = resolve_target("http://localhost:9/x", LOCAL)
    assert local.url in ("http://127.0.0.1:9/x", "http://[::1]:9/x") and local.host_header == "localhost:9"
    assert local.server_name == "localhost"
    six = resolve_target("https://[::1]/", LOCAL)
    assert six.url == "https://[::1]/" and six.address == "::1"


def test_allow_list_exact_and_suffix() -> None:
    policy = UrlPolicy(allow_http=True, allow_private=True, allowed_hosts=("localhost", "*.example.com"))
    assert policy.host_allowed("localhost") and policy.host_allowed("a.b.example.com")
    assert not policy.host_allowed("example.com") and not policy.host_allowed("localhost.evil.net")
    resolve_target("http://LOCALHOST:9/", policy)


def test_recorded_urls_drop_the_query() -> None:
    assert display_url("https://h.example/p?token=secret#f") == "https://h.example/p?…"
    assert display_url("https://h.example/p") == "https://h.example/p"

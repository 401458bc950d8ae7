"""The HTTP service on loopback: search by text, upload and id; every bad request a 4xx with a one-line error;
the web page end to end in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_index import _export

from mmd2v2.models.exported import load_export
from mmd2v2.retrieval.collection import read_collection
from mmd2v2.retrieval.index_build import BuildOptions, build_index
from mmd2v2.retrieval.search import Searcher
from mmd2v2.retrieval.service import create_app, running_server

MAX_UPLOAD = 50_000


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("service")
    export = _export(root / "export")
    build_index(
        load_export(export),
        export,
        read_collection([demo_dir / "images" / "test"]),
        root / "index",
        BuildOptions(progress=False),
    )
    return root / "index"


@pytest.fixture(scope="module")
def base_url(index_dir: Path) -> Iterator[str]:
    with running_server(create_app(Searcher(index_dir), max_upload_bytes=MAX_UPLOAD)) as url:
        yield url


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        body, status, kind = error.read(), error.code, error.headers.get("content-type", "")
    return status, (json.loads(body) if "json" in kind else body), kind


def _post_json(url: str, payload: object) -> tuple[int, Any, str]:
    return _request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _multipart(
    fields: dict[str, str], file_bytes: bytes | None, filename: str = "query.png"
) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    if file_bytes is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + file_bytes
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def test_search_by_text_upload_and_id(base_url: str, index_dir: Path, demo_dir: Path) -> None:
    assert _request(f"{base_url}/api/health")[1] == {"status": "ok", "count": 12}
    info = _request(f"{base_url}/api/info")[1]
    assert info["count"] == 12 and info["dim"] == 8 and info["index_type"] == "Flat"
    status, body, _ = _post_json(f"{base_url}/api/search/text", {"text": "small red circle at top", "k": 5})
    assert status == 200 and len(body["hits"]) == 5
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True) and all(h["kind"] == "image" for h in body["hits"])
    expected = Searcher(index_dir).by_text("small red circle at top", 5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]

    first = body["hits"][0]
    status, thumb, kind = _request(base_url + first["thumbnail"])
    assert status == 200 and kind == "image/jpeg" and Image.open(io.BytesIO(thumb)).size == (32, 32)

    png = (demo_dir / "images" / "test" / first["path"]).read_bytes()
    status, body, _ = _request(f"{base_url}/api/search/image", *_multipart({"k": "3"}, png))
    assert (
        status == 200 and body["hits"][0]["id"] == first["id"] and len(body["hits"]) == 3
    )  # an indexed image finds itself
    status, body, _ = _request(f"{base_url}/api/search/id/{first['id']}?k=2")
    assert status == 200 and body["hits"][0]["id"] == first["id"]

    # kind: only images (all of this index) or only captions (none here)
    status, body, _ = _post_json(
        f"{base_url}/api/search/text", {"text": "small red circle at top", "k": 5, "kind": "image"}
    )
    assert status == 200 and [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert _post_json(f"{base_url}/api/search/text", {"text": "red", "kind": "text"})[1]["hits"] == []
    assert _request(f"{base_url}/api/search/image", *_multipart({"k": "3", "kind": "text"}, png))[1]["hits"] == []
    assert _request(f"{base_url}/api/search/id/{first['id']}?k=2&kind=text")[1]["hits"] == []


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "message"),
    [
        ("json", "/api/search/text", b"{not json", 422, "not valid JSON"),
        ("json", "/api/search/text", {"k": 3}, 422, "field 'text'"),
        ("json", "/api/search/text", {"text": "red", "k": 0}, 422, "field 'k'"),
        ("json", "/api/search/text", {"text": "red", "k": 101}, 422, "field 'k'"),
        ("json", "/api/search/text", {"text": "   "}, 422, "must not be blank"),
        ("json", "/api/search/text", ["red"], 422, "field 'body'"),
        ("json", "/api/search/text", {"text": "red", "kind": "video"}, 422, "field 'kind'"),
        ("get", "/api/search/id/1?kind=video", None, 422, "field 'kind'"),
        ("upload", "/api/search/image", b"this is not an image", 415, "not a readable image"),
        ("upload", "/api/search/image", b"\x89PNG" + bytes(MAX_UPLOAD + 100), 413, "larger than"),
        ("upload", "/api/search/image", None, 422, "field 'image'"),
        ("get", "/api/search/id/99", None, 404, "no item with id 99"),
        ("get", "/api/search/id/abc", None, 422, "field 'item_id'"),
        ("get", "/api/search/id/1?k=1000", None, 422, "field 'k'"),
        ("get", "/api/items/-1", None, 404, "no item with id -1"),
        ("get", "/api/items/..%2F..%2Fetc%2Fpasswd/thumbnail", None, 404, ""),
        ("get", "/api/items/1/../../../../etc/passwd", None, 404, ""),
        ("get", "/static/../../etc/passwd", None, 404, ""),
    ],
)
def test_bad_requests_get_clear_4xx(
    base_url: str, method: str, path: str, payload: Any, status: int, message: str
) -> None:
    if method == "json":
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        got, body, kind = _request(base_url + path, data, {"Content-Type": "application/json"})
    elif method == "upload":
        got, body, kind = _request(base_url + path, *_multipart({"k": "3"}, payload))
    else:
        got, body, kind = _request(base_url + path)
    assert got == status
    assert "json" in kind and set(body) == {"error"} or not message and got == 404
    if message:
        assert message in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]


def test_thumbnails_never_leave_the_collection(tmp_path: Path, index_dir: Path) -> None:
    tampered = tmp_path / "index"
    shutil.copytree(index_dir, tampered)
    lines = (tampered / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["path"] = "../../../../../../etc/passwd"
    (tampered / "metadata.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with running_server(create_app(Searcher(tampered))) as url:
        status, body, _ = _request(f"{url}/api/items/0/thumbnail")
    assert status == 403 and "outside the indexed collection" in body["error"]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("MMD2V2_REQUIRE_BROWSER"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them and requires this test)",
)
def test_web_page_end_to_end_in_headless_chromium(base_url: str, tmp_path: Path) -> None:
    assert _chromium() is not None, (
        "chromium and chromedriver must be on PATH (apt-get install chromium chromium-driver)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = _chromium()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(base_url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "info"), "12 items"))
        driver.find_element(By.ID, "query").send_keys("large green square at left")
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("6")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit img")) == 6)
        wait.until(
            lambda d: all(
                img.get_property("naturalWidth") > 0 for img in d.find_elements(By.CSS_SELECTOR, "#results img")
            )
        )
        scores = [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#results .score")]
        assert scores == sorted(scores, reverse=True)
        driver.save_screenshot(str(tmp_path / "search.png"))
        assert Image.open(tmp_path / "search.png").size[0] > 0

        Select(driver.find_element(By.ID, "kind")).select_by_value("text")  # captions only: this index has none
        driver.find_element(By.ID, "search-button").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "no results"))
        assert not driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        Select(driver.find_element(By.ID, "kind")).select_by_value("image")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit img")) == 6)

        driver.find_element(By.ID, "query").clear()
        driver.find_element(By.ID, "query").send_keys("   ")  # a blank query: the page shows the API's message
        driver.find_element(By.ID, "search-button").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "must not be blank"))
        assert not driver.find_elements(By.CSS_SELECTOR, "#results .hit")
    finally:
        driver.quit()

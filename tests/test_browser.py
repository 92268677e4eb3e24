"""The search page in a real headless Chromium (Playwright, sync API) against a real
uvicorn server on 127.0.0.1: search with Enter, thumbnails load, category filter,
the enlarged view with its label, Escape, keyboard moves, error and empty messages,
the offline API docs, and no request leaves the server.

Screenshots go to tests/artifacts/ (not committed). Skips cleanly without
/usr/bin/chromium or the playwright package; never downloads a browser.
"""

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .)")

from tiny_gallery import build_tiny_index, make_tiny_gallery  # noqa: E402
from traffic_retrieval.index import Retriever  # noqa: E402
from traffic_retrieval.serve.app import ServeSettings, create_app  # noqa: E402
from traffic_retrieval.serve.server import running_server  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MAN = "A walking man between 18 and 60 years old with a backpack."
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    build_tiny_index(make_tiny_gallery(root, seed=1, test_pedestrians=30, test_vehicles=20, train=4, val=2), root / "INDEX")
    with Retriever.open(root / "INDEX", device="cpu") as retriever:
        with running_server(create_app(retriever, ServeSettings())) as base_url:
            yield base_url


@pytest.fixture(scope="module")
def browser():
    try:
        with sync_api.sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            yield launched
            launched.close()
    except sync_api.Error as exc:
        if "Executable doesn't exist" in str(exc) or "Failed to launch" in str(exc):
            pytest.skip(f"cannot start {CHROMIUM}: {str(exc).splitlines()[0]}")
        raise


@pytest.fixture
def page(browser, server):
    """A fresh page that records every request and JavaScript error; after the test, none may have gone elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    requests, errors = [], []
    opened.on("request", lambda request: requests.append(request.url))
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" and "422" not in message.text else None)
    opened.goto("/")
    opened.wait_for_selector("#examples .example")  # /api/info answered
    yield opened
    context.close()
    assert not errors, errors
    assert requests and all(url.startswith(server + "/") for url in requests), [u for u in requests if not u.startswith(server + "/")]


def search(page, query: str) -> None:
    page.fill("#query", query)
    page.press("#query", "Enter")
    wait_for_results(page)


def wait_for_results(page) -> None:
    page.wait_for_function("() => !document.querySelector('form[aria-busy]') && /result|No results|Error/.test(document.querySelector('#status').textContent)")


def all_thumbnails_loaded(page) -> bool:
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(img => img.complete)")
    return page.evaluate("() => [...document.querySelectorAll('#results img')].every(img => img.naturalWidth > 0)")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_enter_searches_and_thumbnails_load(page):
    page.select_option("#category", "all")
    search(page, MAN)
    assert page.locator("#results .hit").count() == 10
    assert all_thumbnails_loaded(page)
    status = page.text_content("#status")
    assert re.search(r"10 results in all categories · search \d+\.\d ms", status), status
    assert page.locator("#results .rank").all_text_contents() == [str(rank) for rank in range(1, 11)]
    scores = [float(s) for s in page.locator("#results .score").all_text_contents()]
    assert scores == sorted(scores, reverse=True)
    assert all(name.endswith(".jpg") for name in page.locator("#results .name").all_text_contents())
    assert "q=" in page.url and "category=all" in page.url  # the search is a link
    screenshot(page, "browser_search.png")


def test_category_filter_shows_only_that_category(page):
    page.fill("#query", MAN)
    for category, expected_count in (("pedestrian", 20), ("vehicle", 20)):
        page.select_option("#k", "20")
        page.select_option("#category", category)  # changing the filter searches again
        wait_for_results(page)
        page.wait_for_function(f"() => [...document.querySelectorAll('#results .hit')].every(h => h.dataset.category === '{category}')")
        categories = page.locator("#results .hit").evaluate_all("hits => hits.map(h => h.dataset.category)")
        assert len(categories) == expected_count and set(categories) == {category}
        assert all_thumbnails_loaded(page)
    screenshot(page, "browser_vehicles.png")


def test_click_enlarges_with_label_and_escape_closes(page):
    page.select_option("#category", "pedestrian")
    search(page, MAN)
    first = page.locator("#results .hit").first
    first.click()
    dialog = page.locator("#viewer")
    dialog.wait_for(state="visible")
    assert page.locator("#viewer-title").text_content() == first.locator(".name").text_content()
    label = page.text_content("#viewer-label")
    assert label and "unknown" not in label and "," in label + "," and not label[0].isdigit()  # attribute names, not 0/1 flags
    page.wait_for_function("() => document.querySelector('#viewer-image').complete && document.querySelector('#viewer-image').naturalWidth > 0")
    assert page.evaluate("() => document.activeElement.id") == "viewer-close"
    screenshot(page, "browser_viewer.png")
    page.keyboard.press("ArrowRight")  # the next result in the viewer
    assert page.text_content("#viewer-rank").startswith("2 of")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    # focus goes back to the result last shown (the dialog's close event runs after it is hidden)
    page.wait_for_function("() => document.activeElement && document.activeElement.dataset.index === '1'", timeout=5000)


def test_keyboard_only_use(page):
    page.focus("#query")
    page.keyboard.type("This is a white Audi.")
    page.keyboard.press("Enter")
    wait_for_results(page)
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.id || document.activeElement.className"))
    assert order == ["category", "k", "search-button", "example"]
    page.locator("#results .hit").first.focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.dataset.index") == "1"
    page.keyboard.press("End")
    assert page.evaluate("() => document.activeElement.dataset.index") == "9"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")  # a result is a button: Enter enlarges it
    page.locator("#viewer").wait_for(state="visible")
    assert page.text_content("#viewer-rank").startswith("9 of")
    page.keyboard.press("Escape")
    page.locator("#viewer").wait_for(state="hidden")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # the focus is visible


def test_examples_errors_and_empty_results(page):
    page.locator("#examples .example").nth(2).click()  # "This is a white Audi."
    wait_for_results(page)
    assert page.input_value("#query") == page.locator("#examples .example").nth(2).text_content()
    assert page.locator("#results .hit").count() == 10

    search(page, "x" * 1001)  # over the limit: the server's 422 reason is shown
    status = page.locator("#status")
    assert status.get_attribute("class") == "status error" and status.get_attribute("role") == "alert"
    assert "Error 422: q: String should have at most 1000 characters" in status.text_content()
    assert page.locator("#results .hit").count() == 0
    screenshot(page, "browser_error.png")

    page.fill("#query", "   ")
    page.press("#query", "Enter")
    assert "Type a query first" in page.text_content("#status")

    page.route("**/api/search?*", lambda route: route.fulfill(status=200, content_type="application/json",
                                                             body='{"query": "q", "k": 10, "category": "vehicle", "count": 0, "took_ms": 0.5, "results": []}'))
    search(page, "a query the index has nothing for")
    assert page.text_content("#status").startswith("No results in vehicles")


def test_link_restores_the_search_and_docs_work_offline(page, server):
    page.goto("/?q=This%20is%20a%20red%20Truck.&k=5&category=vehicle")
    wait_for_results(page)
    assert page.input_value("#query") == "This is a red Truck." and page.input_value("#k") == "5" and page.input_value("#category") == "vehicle"
    assert page.locator("#results .hit").count() == 5
    page.goto("/docs")
    page.wait_for_selector("text=GET /api/search")
    headings = page.locator("main h2").all_text_contents()
    assert {"GET /api/search", "POST /api/search", "GET /api/images/{image_id}", "GET /api/thumbnails/{image_id}", "GET /api/info"} <= set(headings)
    assert "k (query): integer (minimum 1, maximum 100)" in page.text_content("main")


# -- search by an example image (docs/queries.md) ----------------------------------------------
def wait_for_status(page, text: str) -> None:
    page.wait_for_function("text => document.querySelector('#status').textContent.includes(text)", arg=text)
    wait_for_results(page)


def test_more_like_this_shows_the_clicked_image_first(page):
    page.select_option("#category", "all")
    search(page, MAN)
    clicked = page.locator("#results li").nth(2)
    name = clicked.locator(".name").text_content()
    assert clicked.locator(".more").get_attribute("aria-label") == f"More like this: images like {name}"
    clicked.locator(".more").click()
    wait_for_status(page, f"like {name} ")
    assert page.locator("#results .hit").count() == 10 and page.locator("#results .name").first.text_content() == name
    assert re.search(rf"10 results like {re.escape(name)} in all categories · search \d+\.\d ms", page.text_content("#status"))
    assert all_thumbnails_loaded(page)
    assert "similar=" in page.url and "q=" not in page.url  # a link to this search
    screenshot(page, "browser_more_like_this.png")
    page.select_option("#k", "5")  # k and the category apply to the image search shown
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 5")
    wait_for_results(page)
    assert page.locator("#results .name").first.text_content() == name
    page.select_option("#category", "routed")  # an image has no text to route: every category
    wait_for_status(page, "in all categories")
    page.goto(page.url)  # the link restores it
    wait_for_status(page, "like ")
    assert page.locator("#results .name").first.text_content() == name and page.locator("#results .hit").count() == 5
    page.locator("#results .more").first.click()  # more like the first: itself first again
    wait_for_status(page, f"like {name} ")
    assert page.locator("#results .name").first.text_content() == name


def gallery_image(page, server: str, category: str = "vehicle") -> tuple[str, bytes]:
    hit = page.request.get(f"{server}/api/search", params={"q": "a car", "k": 1, "category": category}).json()["results"][0]
    return hit["name"], page.request.get(f"{server}{hit['image_url']}").body()


def test_upload_an_image_with_the_file_picker(page, server):
    _, data = gallery_image(page, server)
    page.select_option("#category", "vehicle")
    page.set_input_files("#image-file", files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": data}])
    wait_for_status(page, "like query.jpg ")
    assert re.search(r"10 results like query\.jpg in vehicles · search \d+\.\d ms", page.text_content("#status"))
    categories = page.locator("#results .hit").evaluate_all("hits => hits.map(h => h.dataset.category)")
    assert len(categories) == 10 and set(categories) == {"vehicle"}
    assert all_thumbnails_loaded(page)
    assert "?" not in page.url  # an upload is not a link
    screenshot(page, "browser_upload.png")


def test_drop_an_image_on_the_drop_zone(page):
    page.evaluate("""async () => {
        const found = await (await fetch('/api/search?q=a%20walking%20man&k=1&category=pedestrian')).json();
        const blob = await (await fetch(found.results[0].image_url)).blob();
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], 'dropped.jpg', { type: blob.type }));
        const zone = document.getElementById('drop-zone');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }""")
    wait_for_status(page, "like dropped.jpg ")
    assert page.locator("#results .hit").count() == 10 and all_thumbnails_loaded(page)
    assert not page.locator("#drop-zone.dragging").count()


def test_uploads_that_are_not_images_or_too_large_show_the_reason(page):
    page.set_input_files("#image-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    wait_for_status(page, "Error 422")
    status = page.locator("#status")
    assert status.get_attribute("class") == "status error" and status.get_attribute("role") == "alert"
    assert "Error 422: image: not a JPEG, PNG, BMP or WebP image" in status.text_content()
    assert page.locator("#results .hit").count() == 0
    page.set_input_files("#image-file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff" + b"0" * 1_000_000}])
    wait_for_status(page, "huge.jpg")  # refused before it is sent
    assert "huge.jpg is 1000003 bytes, over this service's limit of 1000000 bytes" in status.text_content()


def test_docs_list_the_image_routes(page):
    page.goto("/docs")
    page.wait_for_selector("text=POST /api/search/image")
    headings = set(page.locator("main h2").all_text_contents())
    assert {"GET /api/similar/{image_id}", "POST /api/search/image", "POST /api/search/combined"} <= headings
    text = page.text_content("main")
    assert "form.image: file" in text and "body.expression: string (minLength 1, maxLength 1000)" in text

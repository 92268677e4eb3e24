// The search page: plain JavaScript over the JSON API of the same server.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const queryInput = $("query");
  const categorySelect = $("category");
  const kSelect = $("k");
  const statusLine = $("status");
  const resultsList = $("results");
  const examplesList = $("examples");
  const viewer = $("viewer");
  const dropZone = $("drop-zone");
  const fileInput = $("image-file");
  const categoryNames = { all: "all categories", routed: "the query's category", pedestrian: "pedestrians", vehicle: "vehicles" };

  let hits = [];          // the results on screen
  let openIndex = -1;     // the result shown in the viewer
  let opener = null;      // the element focused before the viewer opened
  let pending = null;     // AbortController of the search in flight
  let imageSearch = null; // repeats the last search by image (more like this, upload) when k or the category changes
  let maxUploadBytes = null; // from /api/info

  function setStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
    statusLine.setAttribute("role", isError ? "alert" : "status");
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function errorReason(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (body.detail) return JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    return response.statusText || "request failed";
  }

  // -- search -------------------------------------------------------------------------
  // One search at a time, whatever its kind: a newer one aborts the one in flight.
  // ``like``: what the results are like ("like 0001.jpg "), empty for a text search.
  async function runSearch(url, init, like) {
    if (pending) pending.abort();
    const controller = new AbortController();
    pending = controller;
    setStatus("Searching…", false);
    form.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const response = await fetch(url, Object.assign({ signal: controller.signal, headers: { Accept: "application/json" } }, init));
      if (!response.ok) {
        const reason = await errorReason(response);
        showResults([]);
        setStatus(`Error ${response.status}: ${reason}`, true);
        return;
      }
      const body = await response.json();
      const roundTrip = performance.now() - started;
      showResults(body.results);
      const where = categoryNames[body.category] || body.category;
      if (body.count === 0) {
        setStatus(`No results ${like}in ${where}. Try another category or query.`, false);
      } else {
        setStatus(`${body.count} result${body.count === 1 ? "" : "s"} ${like}in ${where} · search ${body.took_ms.toFixed(1)} ms (${roundTrip.toFixed(0)} ms with the network)`, false);
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      showResults([]);
      setStatus("Error: cannot reach the search service (" + error.message + ").", true);
    } finally {
      if (pending === controller) {
        pending = null;
        form.removeAttribute("aria-busy");
      }
    }
  }

  async function search(options) {
    const query = queryInput.value;
    if (!query.trim()) {
      setStatus("Type a query first, or pick an example.", true);
      queryInput.focus();
      return;
    }
    imageSearch = null;
    const params = new URLSearchParams({ q: query, k: kSelect.value, category: categorySelect.value });
    if (!(options && options.keepUrl)) history.replaceState(null, "", "?" + params.toString());
    await runSearch("/api/search?" + params.toString(), {}, "");
  }

  // An image has no text to route: "Auto" searches every category.
  function imageCategory() {
    return categorySelect.value === "routed" ? "all" : categorySelect.value;
  }

  // More like this: the images most like an indexed one (itself first).
  async function moreLikeThis(id, name, options) {
    imageSearch = () => moreLikeThis(id, name);
    const params = new URLSearchParams({ k: kSelect.value, category: imageCategory() });
    if (!(options && options.keepUrl)) history.replaceState(null, "", "?" + new URLSearchParams({ similar: String(id), k: kSelect.value, category: categorySelect.value }).toString());
    await runSearch(`/api/similar/${encodeURIComponent(id)}?` + params.toString(), {}, `like ${name || "image #" + id} `);
  }

  // Search by an uploaded (dropped or chosen) image.
  async function searchByFile(file) {
    if (!file) return;
    imageSearch = () => searchByFile(file);
    history.replaceState(null, "", location.pathname);  // an upload is not a link
    if (maxUploadBytes !== null && file.size > maxUploadBytes) {
      showResults([]);
      setStatus(`Error: ${file.name} is ${file.size} bytes, over this service's limit of ${maxUploadBytes} bytes.`, true);
      return;
    }
    const body = new FormData();
    body.append("image", file, file.name);
    body.append("k", kSelect.value);
    body.append("category", imageCategory());
    await runSearch("/api/search/image", { method: "POST", body }, `like ${file.name} `);
  }

  function showResults(results) {
    hits = results;
    resultsList.replaceChildren(...results.map((hit, index) => {
      const item = element("li");
      const button = element("button", "hit");
      button.type = "button";
      button.dataset.index = String(index);
      button.dataset.category = hit.category || "";
      button.setAttribute("aria-label", `Rank ${hit.rank}: ${hit.name}, score ${hit.score.toFixed(3)}${hit.category ? ", " + hit.category : ""}. Open larger.`);
      const image = element("img");
      image.src = hit.thumbnail_url;
      image.alt = hit.name;
      image.decoding = "async";
      image.addEventListener("error", () => image.classList.add("broken"));
      const meta = element("span", "meta");
      meta.append(element("span", "name", hit.name));
      const line = element("span", "line");
      line.append(element("span", "score", hit.score.toFixed(3)), element("span", "category", hit.category || "?"));
      meta.append(line);
      button.append(element("span", "rank", String(hit.rank)), image, meta);
      const more = element("button", "more", "More like this");
      more.type = "button";
      more.dataset.index = String(index);
      more.setAttribute("aria-label", `More like this: images like ${hit.name}`);
      item.append(button, more);
      return item;
    }));
  }

  // -- the viewer ------------------------------------------------------------------------
  function show(index) {
    const hit = hits[index];
    if (!hit) return;
    openIndex = index;
    const image = $("viewer-image");
    image.src = hit.image_url;
    image.alt = hit.label_text ? `${hit.name}: ${hit.label_text}` : hit.name;
    $("viewer-title").textContent = hit.name;
    $("viewer-rank").textContent = `${hit.rank} of ${hits.length}`;
    $("viewer-score").textContent = hit.score.toFixed(4);
    $("viewer-category").textContent = hit.category || "unknown";
    $("viewer-label").textContent = hit.label_text || hit.label || "unknown (the index has no label for this image)";
  }

  function openViewer(index) {
    opener = document.activeElement;
    show(index);
    if (!viewer.open) viewer.showModal();
    $("viewer-close").focus();
  }

  viewer.addEventListener("close", () => {
    const button = resultsList.querySelector(`.hit[data-index="${openIndex}"]`);
    (button || opener || queryInput).focus();
  });
  $("viewer-close").addEventListener("click", () => viewer.close());
  viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });  // the backdrop
  viewer.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" && openIndex < hits.length - 1) { show(openIndex + 1); event.preventDefault(); }
    if (event.key === "ArrowLeft" && openIndex > 0) { show(openIndex - 1); event.preventDefault(); }
  });

  resultsList.addEventListener("click", (event) => {
    const more = event.target.closest(".more");
    if (more) {
      const hit = hits[Number(more.dataset.index)];
      if (hit) moreLikeThis(hit.id, hit.name);
      return;
    }
    const button = event.target.closest(".hit");
    if (button) openViewer(Number(button.dataset.index));
  });

  // arrow keys move between results, by row for up and down
  resultsList.addEventListener("keydown", (event) => {
    const current = event.target.closest(".hit");
    if (!current) return;
    const buttons = Array.from(resultsList.querySelectorAll(".hit"));
    const index = buttons.indexOf(current);
    const top = (b) => b.getBoundingClientRect().top;
    const columns = Math.max(1, buttons.filter((b) => Math.abs(top(b) - top(buttons[0])) < 2).length);
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns, Home: -index, End: buttons.length - 1 - index };
    if (!(event.key in moves)) return;
    const next = buttons[index + moves[event.key]];
    if (next) next.focus();
    event.preventDefault();
  });

  // -- wiring --------------------------------------------------------------------------------
  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  function searchAgain() {
    if (imageSearch) imageSearch();
    else if (queryInput.value.trim()) search();
  }
  categorySelect.addEventListener("change", searchAgain);
  kSelect.addEventListener("change", searchAgain);
  queryInput.addEventListener("input", () => { imageSearch = null; });  // typing goes back to text search

  // -- search by an example image: the file picker, or a file dropped on the zone --------------
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) searchByFile(fileInput.files[0]);
  });
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  dropZone.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (files && files.length) searchByFile(files[0]);
  });
  // a file dropped anywhere else must not replace the page with it
  window.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
  window.addEventListener("drop", (event) => { if (hasFiles(event)) event.preventDefault(); });

  function showExamples(examples) {
    examplesList.replaceChildren(...examples.map((text) => {
      const item = element("li");
      const button = element("button", "example", text);
      button.type = "button";
      button.addEventListener("click", () => { queryInput.value = text; search(); });
      item.append(button);
      return item;
    }));
  }

  async function loadInfo() {
    try {
      const response = await fetch("/api/info");
      if (!response.ok) throw new Error(await errorReason(response));
      const info = await response.json();
      const parts = Object.entries(info.categories).map(([name, count]) => `${count} ${name}`).join(", ");
      $("index-info").textContent = `${info.count} images (${parts || "none"}) · model ${info.model} · API docs at /docs`;
      if (info.image_limits && Number.isFinite(info.image_limits.max_body_bytes)) maxUploadBytes = info.image_limits.max_body_bytes;
      showExamples(info.examples || []);
    } catch (error) {
      $("index-info").textContent = "Index information unavailable: " + error.message;
    }
  }

  function restoreFromUrl() {
    const params = new URLSearchParams(location.search);
    if (params.has("category") && categorySelect.querySelector(`option[value="${CSS.escape(params.get("category"))}"]`)) categorySelect.value = params.get("category");
    if (params.has("k") && kSelect.querySelector(`option[value="${CSS.escape(params.get("k"))}"]`)) kSelect.value = params.get("k");
    if (params.get("q")) {
      queryInput.value = params.get("q");
      search({ keepUrl: true });
    } else if (/^[0-9]{1,18}$/.test(params.get("similar") || "")) {
      moreLikeThis(params.get("similar"), null, { keepUrl: true });
    }
  }

  loadInfo();
  restoreFromUrl();
})();

// The regatt search page: plain JavaScript over the public HTTP API (GET /v1/info, POST
// /v1/search, GET /v1/thumb?row=N, GET /v1/duplicates). No framework, no build, no internet.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { file: null, url: null, natural: null, drag: null };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function setStatus(text, error) {
    $("status").textContent = text;
    $("status").classList.toggle("error", !!error);
  }

  const short = (name) => name.split("/").pop() || name;  // the file name; the whole name in title

  function thumb(row, name) {
    const img = el("img", { alt: name, loading: "lazy" });
    if (row === null || row === undefined) {
      img.alt = "no thumbnail: " + name;
    } else {
      img.src = "/v1/thumb?row=" + encodeURIComponent(row);
      img.addEventListener("error", () => { img.alt = "no thumbnail: " + name; img.removeAttribute("src"); });
    }
    return img;
  }

  // ---- what the server offers
  fetch("/v1/info").then((r) => r.json()).then((info) => {
    const parts = [];
    if (info.search) parts.push(info.rows + " photos");
    else parts.push("no collection: start regatt serve with --store STORE");
    if (info.rerank) { parts.push("local features: verification available"); $("rerank-label").hidden = false; }
    $("top").max = info.max_top; $("rerank").max = info.max_rerank;
    if (info.duplicates) $("show-dups").hidden = false;
    $("info").textContent = parts.join(" · ");
  }).catch(() => setStatus("cannot reach the server", true));

  // ---- choosing a photo
  function useFile(file) {
    if (!file || !file.type.startsWith("image/")) { setStatus("not an image: choose a photo", true); return; }
    if (state.url) URL.revokeObjectURL(state.url);
    state.file = file; state.url = URL.createObjectURL(file);
    const img = $("preview");
    img.onload = () => {
      state.natural = [img.naturalWidth, img.naturalHeight];
      $("stage").hidden = false; $("go").disabled = false;
      setBox(null);
      setStatus(file.name + ": " + img.naturalWidth + " x " + img.naturalHeight + " px; drag on it to search inside a box");
    };
    img.src = state.url;
  }
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const f = [...(e.clipboardData || {}).files || []].find((x) => x.type.startsWith("image/"));
    if (f) useFile(f);
  });

  // ---- the box (ROI), in the photo's own pixels
  function scale() {
    const r = $("preview").getBoundingClientRect();
    return { r, sx: state.natural[0] / r.width, sy: state.natural[1] / r.height };
  }
  function setBox(box) {  // box: [x1, y1, x2, y2] in original pixels, or null
    const b = $("box");
    if (!box) { b.hidden = true; $("roi").value = ""; return; }
    const { sx, sy } = scale();
    Object.assign(b.style, { left: box[0] / sx + "px", top: box[1] / sy + "px",
      width: (box[2] - box[0]) / sx + "px", height: (box[3] - box[1]) / sy + "px" });
    b.hidden = false;
    $("roi").value = box.map((v) => Math.round(v)).join(",");
  }
  function pointAt(e) {
    const { r, sx, sy } = scale();
    const x = Math.min(Math.max(e.clientX - r.left, 0), r.width), y = Math.min(Math.max(e.clientY - r.top, 0), r.height);
    return [x * sx, y * sy];
  }
  const stage = $("stage");
  stage.addEventListener("pointerdown", (e) => {
    if (!state.natural) return;
    e.preventDefault(); stage.setPointerCapture(e.pointerId);
    state.drag = pointAt(e);
  });
  stage.addEventListener("pointermove", (e) => {
    if (!state.drag) return;
    const p = pointAt(e), a = state.drag;
    setBox([Math.min(a[0], p[0]), Math.min(a[1], p[1]), Math.max(a[0], p[0]), Math.max(a[1], p[1])]);
  });
  stage.addEventListener("pointerup", (e) => {
    if (!state.drag) return;
    const p = pointAt(e), a = state.drag; state.drag = null;
    const box = [Math.min(a[0], p[0]), Math.min(a[1], p[1]), Math.max(a[0], p[0]), Math.max(a[1], p[1])];
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) setBox(null); else setBox(box);
  });
  $("roi").addEventListener("change", () => {  // typed by hand (keyboard)
    const v = $("roi").value.split(",").map(Number);
    if (v.length === 4 && v.every(Number.isFinite) && state.natural) {
      const keep = $("roi").value; setBox(v); $("roi").value = keep;
    } else if (!$("roi").value.trim()) setBox(null);
  });
  $("clear-box").addEventListener("click", () => setBox(null));
  window.addEventListener("resize", () => {
    const v = $("roi").value.split(",").map(Number);
    if (v.length === 4 && v.every(Number.isFinite) && state.natural) setBox(v);
  });

  // ---- searching
  $("search-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!state.file) { setStatus("choose a photo first", true); return; }
    const form = new FormData();
    form.append("image", state.file);
    const sent = ["top=" + $("top").value];
    form.append("top", $("top").value);
    const roi = $("roi").value.trim();
    if (roi) { form.append("roi", roi); sent.push("roi=" + roi); }
    if (!$("rerank-label").hidden && Number($("rerank").value) > 0) {
      form.append("rerank", $("rerank").value); sent.push("rerank=" + $("rerank").value);
    }
    $("sent").textContent = "Sent: " + sent.join(", ");
    setStatus("searching…"); $("go").disabled = true;
    try {
      const r = await fetch("/v1/search", { method: "POST", body: form });
      const body = await r.json();
      if (!r.ok) { setStatus(body.error || ("error " + r.status), true); return; }
      showResults(body.hits);
      setStatus(body.hits.length + " results");
    } catch (err) {
      setStatus("search failed: " + err, true);
    } finally {
      $("go").disabled = false;
    }
  });

  function showResults(hits) {
    const list = $("results");
    list.replaceChildren();
    for (const h of hits) {
      const meta = el("span", { class: "meta" },
        el("span", { class: "name", title: h.name, text: h.rank + ". " + short(h.name) }),
        el("span", { class: "score", text: "score " + h.score.toFixed(3) + " " }),
        h.inliers !== undefined && h.inliers !== null
          ? el("span", { class: "badge inliers", text: h.inliers + " inliers" }) : null);
      const card = el("button", { type: "button", class: "card", "data-row": h.row,
        "aria-label": "Result " + h.rank + ": " + h.name + ", score " + h.score.toFixed(3) }, thumb(h.row, h.name), meta);
      card.addEventListener("click", () => openHit(h));
      list.append(el("li", {}, card));
    }
  }

  function openHit(h) {
    $("detail-query").src = state.url || "";
    $("detail-hit").src = "/v1/thumb?row=" + encodeURIComponent(h.row);
    $("detail-name").textContent = h.name;
    let text = "Rank " + h.rank + " · score " + h.score.toFixed(3);
    if (h.inliers !== undefined && h.inliers !== null) {
      text += " · " + h.inliers + " verified matches (local features, geometric check)";
    } else {
      text += " · matched by the global descriptor (turn on verification to count local matches)";
    }
    if ($("roi").value) text += " · query box " + $("roi").value;
    $("detail-text").textContent = text;
    $("detail-match-fig").hidden = true; $("detail-pair").hidden = false;
    if (state.matchUrl) { URL.revokeObjectURL(state.matchUrl); state.matchUrl = null; }
    if (h.inliers !== undefined && h.inliers !== null && state.file) {  // the verified matches picture
      const q = "/v1/match?row=" + encodeURIComponent(h.row) + ($("roi").value ? "&roi=" + encodeURIComponent($("roi").value) : "");
      fetch(q, { method: "POST", body: state.file }).then(async (r) => {
        if (!r.ok) throw new Error((await r.json()).error || r.status);
        state.matchUrl = URL.createObjectURL(await r.blob());
        $("detail-match").src = state.matchUrl;
        $("detail-match-fig").hidden = false; $("detail-pair").hidden = true;  // it shows both
      }).catch((err) => { $("detail-text").textContent = text + " · no matches picture: " + err.message; });
    }
    const d = $("detail");
    if (d.showModal) d.showModal(); else d.setAttribute("open", "");
    $("detail-close").focus();
  }

  // ---- views
  function show(view) {
    const dups = view === "dups";
    $("search-view").hidden = dups; $("dups-view").hidden = !dups;
    $("show-search").setAttribute("aria-pressed", String(!dups));
    $("show-dups").setAttribute("aria-pressed", String(dups));
    if (dups) loadDuplicates();
  }
  $("show-search").addEventListener("click", () => show("search"));
  $("show-dups").addEventListener("click", () => show("dups"));

  async function loadDuplicates() {
    const box = $("groups");
    box.replaceChildren(el("p", { class: "muted", text: "loading…" }));
    try {
      const r = await fetch("/v1/duplicates");
      const body = await r.json();
      if (!r.ok) { box.replaceChildren(el("p", { class: "muted", text: body.error })); return; }
      box.replaceChildren();
      if (!body.groups.length) box.append(el("p", { text: "No duplicate groups." }));
      for (const g of body.groups) {
        const list = el("ol", { class: "grid" });
        for (const m of g.members) {
          const action = m.action === "remove" ? "remove" : "keep";
          const score = typeof m.score === "number" ? "score " + m.score.toFixed(3) : "representative";
          list.append(el("li", { class: "card " + action },
            thumb(m.row, m.name),
            el("span", { class: "meta" },
              el("span", { class: "badge " + action, text: action }), " ",
              el("span", { class: "name", title: m.name, text: short(m.name) }),
              el("span", { class: "muted", text: score }))));
        }
        box.append(el("section", { class: "group", "aria-label": "Group " + g.id },
          el("h3", { text: "Group " + g.id + " (" + g.members.length + " photos)" }), list));
      }
    } catch (err) {
      box.replaceChildren(el("p", { class: "muted", text: "cannot load duplicates: " + err }));
    }
  }
})();

// cxrtl serve: the page. Plain JS, no build step, no network beyond this server.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let model = null;

  function authHeaders() {
    const t = sessionStorage.getItem("cxrtl-token");
    return t ? { Authorization: "Bearer " + t } : {};
  }

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

  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  // The bar's width through the CSSOM: the Content-Security-Policy refuses inline style attributes.
  function fill(p) { const s = el("span"); s.style.width = (100 * p).toFixed(2) + "%"; return s; }

  async function loadModel() {
    const info = $("model-info");
    let res;
    try { res = await fetch("/v1/model", { headers: authHeaders() }); }
    catch (e) { info.replaceChildren(el("dt", { text: "Status" }), el("dd", { class: "error", text: "server unreachable" })); return; }
    if (res.status === 401) {
      $("token-box").hidden = false;
      info.replaceChildren(el("dt", { text: "Status" }), el("dd", { text: "this server needs a token" }));
      return;
    }
    model = await res.json();
    $("token-box").hidden = true;
    const tr = model.training || {};
    const cal = model.calibration || {};
    const pp = model.preprocessing || {};
    const rows = [
      ["Classes", model.classes.join(", ")],
      ["Backbone", model.backbone || "unknown"],
      ["Backend", model.backend],
      ["Input", `${pp.input}, ${pp.channels} channel${pp.channels === 1 ? "" : "s"}, ${pp.size} px`],
      ["Best epoch", tr.best_epoch != null ? String(tr.best_epoch) : "not recorded"],
      ["Validation accuracy", tr.best_val_acc != null ? Number(tr.best_val_acc).toFixed(4) : "not recorded"],
      ["Temperature", cal.temperature != null ? Number(cal.temperature).toFixed(3) : "none (uncalibrated)"],
      ["Conformal threshold", cal.conformal_threshold != null ? Number(cal.conformal_threshold).toFixed(4) : "none"],
      ["Grad-CAM", model.cam ? "available" : "not with ONNX"],
      ["cxrtl", model.cxrtl_version],
    ];
    info.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  function resultItem(file, i) {
    const li = el("li", { class: "result", id: "result-" + i, "aria-busy": "true" });
    li.append(el("div", { class: "figure" }), el("div", { class: "body" }, el("h3", { class: "name", text: file.name }),
      el("p", { class: "pending", text: "predicting…" })));
    return li;
  }

  function showRow(li, row, file, i) {
    li.setAttribute("aria-busy", "false");
    const fig = li.querySelector(".figure");
    const body = li.querySelector(".body");
    body.querySelector(".pending")?.remove();
    if (row.error) {
      body.append(el("p", { class: "error", role: "alert", text: "Error: " + row.error }));
      return;
    }
    const src = row.image_png ? "data:image/png;base64," + row.image_png : URL.createObjectURL(file);
    const img = el("img", { class: "image", src: src, alt: "uploaded radiograph " + row.path });
    fig.append(img);
    if (row.ood && row.ood.flag) {
      const warning = "This image is unlike the chest radiographs the model was trained on; its prediction is not meaningful.";
      body.append(el("p", { class: "error ood", role: "alert", text: warning }));
    }
    body.append(el("p", { class: "label" }, "Predicted class: ", el("strong", { class: "pred", text: row.label })));
    const bars = el("div", { class: "bars", role: "list", "aria-label": "class probabilities" });
    for (const [cls, p] of Object.entries(row.probabilities)) {
      const id = `p-${i}-${cls.replace(/\W+/g, "_")}`;
      bars.append(
        el("span", { class: "cls", id: id, role: "listitem", text: cls }),
        el("div", { class: "bar", role: "meter", "aria-labelledby": id, "aria-valuemin": "0", "aria-valuemax": "1",
                    "aria-valuenow": String(p) }, fill(p)),
        el("span", { class: "value", "data-class": cls, "data-p": String(p), text: pct(p) }));
    }
    body.append(el("p", { class: "caption", text: "Probability of each class:" }), bars);
    if (Array.isArray(row.prediction_set)) {
      const members = row.prediction_set.length
        ? "{" + row.prediction_set.join(", ") + "}"
        : "empty: no class is plausible at this coverage; look at the image";
      body.append(el("p", { class: "set", text: "Prediction set: " + members }));
    }
    if (row.cam_png) {
      const cam = el("img", { class: "cam-overlay", src: "data:image/png;base64," + row.cam_png,
                              alt: "Grad-CAM overlay for " + (row.cam_class || row.label), hidden: "" });
      fig.append(cam);
      const box = el("input", { type: "checkbox", id: "cam-" + i, class: "cam-toggle" });
      box.addEventListener("change", () => { cam.hidden = !box.checked; img.hidden = box.checked; });
      body.append(el("p", {}, box, " ", el("label", { for: "cam-" + i,
        text: `Show Grad-CAM overlay (${row.cam_class || row.label})` })));
    } else if (row.cam_error) {
      body.append(el("p", { class: "set", text: "No Grad-CAM: " + row.cam_error }));
    }
  }

  async function send(files) {
    if (!files.length) return;
    const list = $("results");
    list.replaceChildren(...files.map(resultItem));
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const q = "?image=true" + (model && model.cam ? "&cam=true" : "");
    $("status").textContent = `Predicting ${files.length} file${files.length === 1 ? "" : "s"}…`;
    let res, body;
    try {
      res = await fetch("/v1/predict" + q, { method: "POST", body: form, headers: authHeaders() });
      body = await res.json();
    } catch (e) {
      res = null; body = { error: "no answer from the server (" + e + ")" };
    }
    if (!res || !res.ok) {
      const msg = body && body.error ? body.error : "HTTP " + (res && res.status);
      $("status").textContent = "Request failed: " + msg;
      files.forEach((f, i) => showRow(list.children[i], { path: f.name, error: msg }, f, i));
      return;
    }
    body.forEach((row, i) => showRow(list.children[i], row, files[i], i));
    const bad = body.filter((r) => r.error).length;
    $("status").textContent = `Done: ${body.length - bad} predicted, ${bad} failed.`;
  }

  const drop = $("drop");
  const input = $("files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); send([...e.dataTransfer.files]); });
  input.addEventListener("change", () => { const f = [...input.files]; input.value = ""; send(f); });
  $("token-save").addEventListener("click", () => { sessionStorage.setItem("cxrtl-token", $("token").value); loadModel(); });
  loadModel();
})();

// kerassl serve web page: lists models (GET /v1/models, a kerassl extension), sends the
// chosen image to every model's TF Serving predict endpoint as {"b64": ...}, and shows the
// top-5 classes of each model side by side. Plain JS, no build step.
"use strict";

const TOP = 5;
const state = { models: [] };

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function modelCard(model) {
  const card = el("article", { class: "model", "data-model": model.name });
  card.appendChild(el("h2", {}, model.name));
  const details = [`version ${model.latest_version}`];
  if (model.method) details.push(model.method);
  if (model.dataset) details.push(model.dataset);
  if (model.image_size) details.push(`${model.image_size}×${model.image_size}×${model.channels}`);
  card.appendChild(el("p", { class: "details" }, details.join(" · ")));
  card.appendChild(el("ol", { class: "predictions" }));
  card.appendChild(el("p", { class: "error", hidden: "" }));
  return card;
}

async function loadModels() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  state.models = body.models;
  const container = document.getElementById("models");
  container.replaceChildren(...state.models.map(modelCard));
  if (state.models.some((m) => m.channels === 1)) {
    document.getElementById("draw-panel").hidden = false;
  }
  setStatus(`${state.models.length} model(s) loaded. Choose an image.`);
}

function showPrediction(card, prediction) {
  const list = card.querySelector(".predictions");
  const rows = prediction.classes.slice(0, TOP).map((classId, rank) => {
    const probability = prediction.probabilities[classId];
    const row = el("li", { class: "prediction", "data-class-id": String(classId) });
    row.appendChild(el("span", { class: "label" }, prediction.class_names[rank]));
    row.appendChild(el("span", { class: "probability" }, `${(probability * 100).toFixed(1)}%`));
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(1, probability * 100)}%`;
    row.appendChild(bar);
    return row;
  });
  list.replaceChildren(...rows);
  card.querySelector(".error").hidden = true;
}

function showError(card, message) {
  card.querySelector(".predictions").replaceChildren();
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
}

async function predictOne(model, b64) {
  const card = document.querySelector(`article[data-model="${CSS.escape(model.name)}"]`);
  try {
    const response = await fetch(`/v1/models/${encodeURIComponent(model.name)}:predict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ signature_name: "serving_default", instances: [{ b64 }] }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    showPrediction(card, body.predictions[0]);
  } catch (error) {
    showError(card, String(error.message || error));
  }
}

async function predictAll(b64) {
  setStatus("Predicting…");
  await Promise.all(state.models.map((model) => predictOne(model, b64)));
  setStatus("Done.");
  document.body.dataset.predicted = String(Number(document.body.dataset.predicted || 0) + 1);
}

function dataUrlToB64(url) {
  return url.slice(url.indexOf(",") + 1);
}

document.getElementById("file-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const preview = document.getElementById("preview");
    preview.src = reader.result;
    preview.hidden = false;
    predictAll(dataUrlToB64(reader.result));
  };
  reader.onerror = () => setStatus(`Cannot read ${file.name}`);
  reader.readAsDataURL(file);
});

// Drawing: white strokes on black, like MNIST; the SavedModel resizes 280 px to its size.
const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
function clearCanvas() {
  context.fillStyle = "black";
  context.fillRect(0, 0, canvas.width, canvas.height);
}
clearCanvas();
let drawing = false;
function point(event) {
  const box = canvas.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * canvas.width) / box.width,
    ((event.clientY - box.top) * canvas.height) / box.height,
  ];
}
canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  context.beginPath();
  context.moveTo(...point(event));
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  context.lineWidth = 22;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.strokeStyle = "white";
  context.lineTo(...point(event));
  context.stroke();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  predictAll(dataUrlToB64(canvas.toDataURL("image/png")));
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
document.getElementById("predict-drawing").addEventListener("click", () => {
  predictAll(dataUrlToB64(canvas.toDataURL("image/png")));
});
document.getElementById("clear-drawing").addEventListener("click", clearCanvas);

loadModels().catch((error) => setStatus(`Cannot list models: ${error.message}`));

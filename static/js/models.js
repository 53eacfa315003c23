// Saved models (GET /models) with download links; refreshed on load and when a job ends.

import { api } from "./api.js";
import { byId, bytes, h, pct, setText } from "./dom.js";

const EMPTY_TEXT = "No saved model yet: one appears here when a job completes.";

export class ModelList {
  constructor() {
    this.list = byId("models-list");
    this.empty = byId("models-empty");
    this.pending = null;
  }

  /** Fetch and render; overlapping calls share one request. */
  refresh() {
    this.pending ??= api("GET", "/models")
      .then((body) => this.render(body.models ?? []))
      .catch((err) => {
        setText(this.empty, `Could not list the saved models: ${err.message}`);
        this.empty.hidden = false;
      })
      .finally(() => (this.pending = null));
    return this.pending;
  }

  render(models) {
    this.list.replaceChildren(...models.map((m) => this.item(m)));
    setText(this.empty, EMPTY_TEXT);
    this.empty.hidden = models.length > 0;
    this.list.dataset.count = String(models.length);
  }

  item(model) {
    const meta = model.metadata ?? {};
    // The server's test accuracy; a model trained on the nodes' own data with no server test
    // set has the nodes' weighted mean on their own test splits instead.
    const onServer = Number.parseFloat(meta.test_accuracy);
    const accuracy = Number.isFinite(onServer) ? onServer : Number.parseFloat(meta.federated_accuracy);
    const accuracyTitle = Number.isFinite(onServer) ? "test accuracy" : "the nodes' weighted mean test accuracy, on their own test splits";
    // Only a same-origin path becomes a link: never a javascript: or //other-host URL.
    const safeUrl = typeof model.url === "string" && /^\/(?!\/)/.test(model.url) ? model.url : null;
    const created = new Date(model.created);
    const when = Number.isNaN(created.getTime())
      ? String(model.created ?? "")
      : created.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
    // A job saves its final model and its best round's (GET /models' kind and best_round).
    const kind = model.kind === "best" ? `best (round ${model.best_round ?? "?"})` : model.kind;
    const facts = [
      typeof kind === "string" ? kind : null,
      meta.dataset ? `${meta.dataset}${meta.dataset_source ? ` (${meta.dataset_source})` : ""}` : null,
      meta.rounds ? `${meta.rounds} rounds` : null,
      meta.aggregation ? `${meta.aggregation} averaging` : null,
      bytes(model.size),
      when,
    ];
    return h(
      "li",
      { class: "model", dataset: { name: model.name } },
      h("div", { class: "model-head" },
        safeUrl
          ? h("a", { href: safeUrl, download: model.name, class: "download", title: `download ${model.name}` }, model.name)
          : h("span", { class: "download" }, model.name),
        h("span", { class: "model-acc", title: accuracyTitle }, pct(Number.isFinite(accuracy) ? accuracy : null, 2))),
      h("div", { class: "model-meta" }, facts.filter(Boolean).join(" · ")),
      h("div", { class: "hash", title: model.sha256 ?? "" }, model.sha256 ? `sha256 ${model.sha256}` : ""),
    );
  }
}

// The dataset picker: the prepared datasets and the catalogue's entries (GET /datasets) in
// one <select>, each with its title, its sample shape and whether it is prepared. A dataset
// a user imported is prepared already and has no catalogue entry: nothing to prepare.

import { h, shape } from "./dom.js";

const DEFAULT_DATASET = "mnist";

/**
 * One choice per dataset id, the catalogue's entries first (in its order), then imported ones.
 * @returns {{id: string, title: string, shape: number[] | undefined, prepared: boolean, catalogued: boolean}[]}
 */
export function datasetChoices(body) {
  const prepared = new Map((body?.datasets ?? []).map((d) => [d.dataset_id, d]));
  const choices = (body?.catalog ?? []).map((entry) => ({
    id: entry.dataset_id,
    title: entry.title || entry.dataset_id,
    shape: prepared.get(entry.dataset_id)?.input_shape ?? entry.input_shape,
    prepared: Boolean(entry.prepared) || prepared.has(entry.dataset_id),
    catalogued: true,
  }));
  const listed = new Set(choices.map((c) => c.id));
  for (const info of prepared.values()) {
    if (listed.has(info.dataset_id)) continue;
    choices.push({ id: info.dataset_id, title: info.dataset_id, shape: info.input_shape, prepared: true, catalogued: false });
  }
  return choices;
}

/** What an option says: "CIFAR-10 (cifar10) · 3×32×32 · not prepared". */
export function choiceLabel(choice) {
  const name = choice.title === choice.id ? choice.id : `${choice.title} (${choice.id})`;
  const status = !choice.catalogued ? "imported" : choice.prepared ? "prepared" : "not prepared";
  return `${name} · ${shape(choice.shape)} · ${status}`;
}

export class DatasetPicker {
  /** @param {HTMLSelectElement} select */
  constructor(select) {
    this.select = select;
    this.choices = new Map();
  }

  /** Rebuild the options from a GET /datasets answer, keeping the user's choice when it is still listed. */
  render(body) {
    const current = this.select.value || DEFAULT_DATASET;
    const choices = datasetChoices(body);
    this.choices = new Map(choices.map((c) => [c.id, c]));
    this.select.replaceChildren(
      ...choices.map((c) =>
        h("option", { value: c.id, dataset: { prepared: String(c.prepared), catalogued: String(c.catalogued) } }, choiceLabel(c)),
      ),
    );
    const fallback = this.choices.has(DEFAULT_DATASET) ? DEFAULT_DATASET : (choices[0]?.id ?? "");
    this.select.value = this.choices.has(current) ? current : fallback;
  }

  /** The selected choice; before the first list arrives, the template's one option (mnist). */
  selected() {
    const id = this.select.value;
    return this.choices.get(id) ?? { id, title: id, shape: undefined, prepared: false, catalogued: true };
  }

  title(id) {
    return this.choices.get(id)?.title ?? id;
  }
}

// JSON values as YAML text, for showing manifests as their authors write them. Strings
// are quoted whenever YAML could read them as something else.

const plain = /^[A-Za-z_./][A-Za-z0-9_ ./:@()-]*$/;
const reserved = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  const s = String(value);
  if (s === "" || !plain.test(s) || reserved.test(s) || /[:#]\s|\s$|:$/.test(s)) return JSON.stringify(s);
  return s;
}

function isScalar(value) {
  return value === null || typeof value !== "object";
}

/** `value` as YAML (block style; empty arrays and objects inline). */
export function toYaml(value, indent = 0) {
  const pad = "  ".repeat(indent);
  if (isScalar(value)) return pad + scalar(value) + "\n";
  if (Array.isArray(value)) {
    if (!value.length) return pad + "[]\n";
    return value
      .map((item) => {
        if (isScalar(item)) return `${pad}- ${scalar(item)}\n`;
        if (Array.isArray(item) && item.every(isScalar) && item.length) return `${pad}- [${item.map(scalar).join(", ")}]\n`;
        const inner = toYaml(item, indent + 1);
        return `${pad}- ${inner.slice(pad.length + 2)}`;
      })
      .join("");
  }
  const entries = Object.entries(value);
  if (!entries.length) return pad + "{}\n";
  return entries
    .map(([key, item]) => {
      const k = scalar(key);
      if (isScalar(item)) return `${pad}${k}: ${scalar(item)}\n`;
      if (Array.isArray(item) && item.length && item.every(isScalar)) return `${pad}${k}: [${item.map(scalar).join(", ")}]\n`;
      if ((Array.isArray(item) && !item.length) || (!Array.isArray(item) && !Object.keys(item).length)) {
        return `${pad}${k}: ${Array.isArray(item) ? "[]" : "{}"}\n`;
      }
      return `${pad}${k}:\n${toYaml(item, Array.isArray(item) ? indent : indent + 1)}`;
    })
    .join("");
}

// A small, offline rendering of /openapi.json: each route, its parameters, body and responses.
"use strict";

(async function () {
  const main = document.getElementById("api");
  const element = (tag, text, className) => {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  };
  const refName = (schema) => (schema && schema.$ref ? schema.$ref.split("/").pop() : null);
  const describe = (schema) => {
    if (!schema) return "";
    if (schema.$ref) return refName(schema);
    if (schema.anyOf) return schema.anyOf.map(describe).join(" | ");
    const limits = ["minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"]
      .filter((key) => key in schema).map((key) => `${key} ${schema[key]}`);
    const type = schema.type === "array" ? `array of ${describe(schema.items)}` : schema.type || "any";
    return [type, limits.length ? `(${limits.join(", ")})` : "", "default" in schema ? `default ${JSON.stringify(schema.default)}` : ""]
      .filter(Boolean).join(" ");
  };
  let spec;
  try {
    const response = await fetch("/openapi.json");
    spec = await response.json();
  } catch (error) {
    main.replaceChildren(element("p", "Cannot load /openapi.json: " + error.message, "status error"));
    return;
  }
  const sections = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const section = element("section", undefined, "api-route");
      section.append(element("h2", `${method.toUpperCase()} ${path}`));
      if (operation.summary) section.append(element("p", operation.summary));
      const rows = (operation.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""}): ${describe(p.schema)}${p.description ? " — " + p.description : ""}`);
      const content = (operation.requestBody && operation.requestBody.content) || {};
      const form = !content["application/json"] && content["multipart/form-data"];
      const body = content["application/json"] || form;
      if (body) {
        const name = refName(body.schema);
        const schema = name ? spec.components.schemas[name] : body.schema;
        for (const [field, fieldSchema] of Object.entries(schema.properties || {})) {
          const type = fieldSchema.format === "binary" ? "file" : describe(fieldSchema);
          rows.push(`${form ? "form" : "body"}.${field}: ${type}${form && fieldSchema.description ? " — " + fieldSchema.description : ""}`);
        }
      }
      if (rows.length) {
        const list = element("ul");
        rows.forEach((row) => list.append(element("li", row)));
        section.append(list);
      }
      section.append(element("p", "Responses: " + Object.keys(operation.responses || {}).join(", "), "muted small"));
      sections.push(section);
    }
  }
  main.replaceChildren(...sections);
})();

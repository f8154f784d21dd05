// A small typed client over the generated types (src/schema.d.ts, from the API's
// /openapi.json): if a route's parameters or answers lose their types, this stops compiling.
import type { components, paths } from "./schema";

type Schemas = components["schemas"];
type JsonOf<R> = R extends { content: { "application/json": infer Body } } ? Body : never;
type QueryOf<Op> = Op extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;

export type WorkflowSummary = Schemas["WorkflowSummary"];
export type ExecutionSummary = Schemas["ExecutionSummary"];
export type AuditEntry = Schemas["AuditEntryOut"];
export type ErrorBody = Schemas["ErrorBody"];

export type WorkflowQuery = QueryOf<paths["/api/workflows"]["get"]>;
export type ExecutionQuery = QueryOf<paths["/api/executions"]["get"]>;
export type AuditQuery = QueryOf<paths["/api/audit"]["get"]>;

// The answers the schema declares are the ones this client returns.
type Listed = JsonOf<paths["/api/workflows"]["get"]["responses"][200]>;
const listedIsWorkflows: (listed: Listed) => WorkflowSummary[] = (listed) => listed;
type Patched = JsonOf<paths["/api/workflows/{workflow_id}"]["patch"]["responses"][200]>;
const patchedIsWorkflow: (patched: Patched) => WorkflowSummary = (patched) => patched;

export interface Page<T> {
  items: T[];
  /** The next page's path and query (the Link header's), or null on the last page. */
  next: string | null;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(`${status}: ${body.detail}`);
  }
}

export function nextLink(header: string | null): string | null {
  const found = header?.match(/^<([^>]+)>; rel="next"$/);
  return found?.[1] ?? null;
}

export class FlowMaestro {
  constructor(
    private readonly base: string,
    private readonly key: string,
  ) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<{ body: T; next: string | null }> {
    const init: RequestInit = {
      method,
      headers: { Authorization: `Bearer ${this.key}`, "content-type": "application/json" },
    };
    if (body !== undefined) init.body = JSON.stringify(body);
    const answer = await fetch(this.base + path, init);
    if (!answer.ok) throw new ApiError(answer.status, (await answer.json()) as ErrorBody);
    return { body: (await answer.json()) as T, next: nextLink(answer.headers.get("link")) };
  }

  private static query(values: Record<string, string | number | undefined | null>): string {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(values)) {
      if (value !== undefined && value !== null) params.set(name, String(value));
    }
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  async workflows(query: WorkflowQuery = {}): Promise<Page<WorkflowSummary>> {
    const { body, next } = await this.call<Listed>("GET", "/api/workflows" + FlowMaestro.query(query));
    return { items: listedIsWorkflows(body), next };
  }

  async page<T>(next: string): Promise<Page<T>> {
    const { body, next: after } = await this.call<T[]>("GET", next);
    return { items: body, next: after };
  }

  async patchWorkflow(id: string, change: Schemas["WorkflowPatch"]): Promise<WorkflowSummary> {
    const { body } = await this.call<Patched>("PATCH", `/api/workflows/${encodeURIComponent(id)}`, change);
    return patchedIsWorkflow(body);
  }

  async execute(id: string, request: Schemas["ExecuteBody"]): Promise<Schemas["ExecutionAccepted"]> {
    const path = `/api/workflows/${encodeURIComponent(id)}/execute`;
    return (await this.call<Schemas["ExecutionAccepted"]>("POST", path, request)).body;
  }

  async executions(query: ExecutionQuery = {}): Promise<Page<ExecutionSummary>> {
    const { body, next } = await this.call<ExecutionSummary[]>("GET", "/api/executions" + FlowMaestro.query(query));
    return { items: body, next };
  }

  async audit(query: AuditQuery = {}): Promise<Page<AuditEntry>> {
    const { body, next } = await this.call<AuditEntry[]>("GET", "/api/audit" + FlowMaestro.query(query));
    return { items: body, next };
  }
}

// Every archived workflow tagged "billing", all pages.
export async function archivedBilling(client: FlowMaestro): Promise<string[]> {
  const names: string[] = [];
  let page = await client.workflows({ tag: "billing", status: "archived", limit: 100 });
  for (;;) {
    names.push(...page.items.map((w) => `${w.name} (${w.status}, ${w.tags.join(", ")})`));
    if (page.next === null) return names;
    page = await client.page<WorkflowSummary>(page.next);
  }
}

/**
 * The cowfs server extension's REST API, through the server's own connection settings so the
 * login token and XSRF cookie go with every request.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface ICellRow {
  before: string | null;
  after: string;
  time: number;
  execution_count: number | null;
  first_line: string;
  success: boolean | null;
  error: string | null;
  files_changed: number;
  bytes_added: number;
  variables: string | null;
  label: string;
  pinned: boolean;
}

export interface ICellPage {
  in_workspace: boolean;
  message?: string;
  notebook?: string;
  mountpoint?: string;
  branch?: string;
  total: number;
  offset: number;
  rows: ICellRow[];
  head: number;
}

export interface IChange {
  path: string;
  kind: 'added' | 'removed' | 'modified';
  size_before: number | null;
  size_after: number | null;
  patch: string | null;
}

export interface IChanges {
  before: string | null;
  after: string;
  changes: IChange[];
  total: number;
  note: string | null;
}

export interface IOpened {
  snapshot: string;
  directory: string;
  /** The notebook for this server, or null when the branch got a server of its own (url). */
  path: string | null;
  url?: string;
  restores_variables: boolean;
}

/** A refusal from the server, with the one line it gave. */
export class ApiError extends Error {}

async function call<T>(endpoint: string, init: RequestInit = {}, query: Record<string, string> = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const search = new URLSearchParams(query).toString();
  const url = URLExt.join(settings.baseUrl, 'cowfs', endpoint) + (search ? `?${search}` : '');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`cannot reach the Jupyter server: ${error}`);
  }
  let body: any = {};
  try {
    body = await response.json();
  } catch {
    // an HTML error page: keep the status line below
  }
  if (!response.ok) {
    throw new ApiError(body.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

function post<T>(endpoint: string, body: object): Promise<T> {
  return call<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

export const api = {
  cells: (path: string, offset: number, limit: number) =>
    call<ICellPage>('cells', {}, { path, offset: String(offset), limit: String(limit) }),
  changes: (path: string, row: ICellRow) =>
    call<IChanges>('changes', {}, row.before ? { path, before: row.before, after: row.after } : { path, after: row.after }),
  open: (path: string, snapshot: string) => post<IOpened>('open', { path, snapshot }),
  pin: (path: string, row: ICellRow, pinned: boolean) =>
    post<{ pinned: boolean }>('pin', { path, snapshots: [row.before, row.after].filter(Boolean), pinned }),
  label: (path: string, snapshot: string, label: string) => post<{ label: string }>('label', { path, snapshot, label })
};

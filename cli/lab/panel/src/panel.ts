/**
 * The Cell history side panel: one row per executed cell of the active notebook, newest first,
 * kept live by polling; the selected row's changes below; actions on the row.
 *
 * The list is virtualised (only the rows in view are in the DOM, fetched a page at a time), so a
 * log of 10,000 cells costs what one screenful does. It is a WAI-ARIA listbox: arrow keys,
 * Home/End and PageUp/PageDown move the selection, which screen readers follow through
 * aria-activedescendant.
 */
import { InputDialog } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { ApiError, api, ICellPage, ICellRow, IChanges } from './api';

const ROW_HEIGHT = 46; // px, fixed: what lets the list compute which rows are in view
const PAGE_SIZE = 100;
const POLL_MS = 2000;
const OVERSCAN = 8;

function humanSize(bytes: number | null): string {
  if (bytes === null || bytes === undefined) {
    return '';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function clock(seconds: number): string {
  const when = new Date(seconds * 1000);
  const today = new Date().toDateString() === when.toDateString();
  return today ? when.toLocaleTimeString() : when.toLocaleString();
}

/** A label the user gave, not the one the kernel extension writes for every cell. */
function userLabel(row: ICellRow): string {
  return /^(after|before)[ :[]/.test(row.label) ? '' : row.label;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

export class CellHistoryPanel extends Widget {
  private readonly tracker: INotebookTracker;
  private notebookPath = '';
  private pages = new Map<number, ICellRow[]>();
  private loading = new Set<number>();
  private total = 0;
  private head = -1;
  private selected = 0;
  private selectedAfter: string | null = null;
  private timer: number | undefined;
  private generation = 0; // bumped when the notebook or the log changes: late replies are dropped

  private readonly status = element('div', 'cowfs-status');
  private readonly list = element('div', 'cowfs-list');
  private readonly spacer = element('div', 'cowfs-spacer');
  private readonly details = element('section', 'cowfs-details');
  private readonly actions = element('div', 'cowfs-actions');
  private readonly changesView = element('div', 'cowfs-changes');
  private readonly buttons: Record<string, HTMLButtonElement> = {};

  constructor(tracker: INotebookTracker) {
    super();
    this.tracker = tracker;
    this.addClass('cowfs-panel');
    this.id = 'cowfs-cell-history';
    this.title.caption = 'Cell history';

    const header = element('header', 'cowfs-header');
    header.appendChild(element('h2', 'cowfs-title', 'Cell history'));
    this.status.setAttribute('role', 'status');
    header.appendChild(this.status);

    this.list.setAttribute('role', 'listbox');
    this.list.setAttribute('tabindex', '0');
    this.list.setAttribute('aria-label', 'Executed cells, newest first');
    this.list.appendChild(this.spacer);
    this.list.addEventListener('scroll', () => this.render());
    this.list.addEventListener('keydown', event => this.onKey(event));
    this.list.addEventListener('click', event => this.onClick(event));

    this.details.setAttribute('aria-label', 'What the selected cell changed');
    this.actions.setAttribute('role', 'toolbar');
    this.actions.setAttribute('aria-label', 'Actions on the selected cell');
    this.addButton('openBefore', 'Open before', 'Open the workspace as it was just before this cell, with its variables', () =>
      this.openHere('before')
    );
    this.addButton('openAfter', 'Open after', 'Open the workspace as it was just after this cell, with its variables', () =>
      this.openHere('after')
    );
    this.addButton('pin', 'Pin', 'Keep these snapshots whatever prune says', () => this.togglePin());
    this.addButton('label', 'Label', 'Give the snapshot after this cell a label to find it by', () => this.relabel());
    this.changesView.setAttribute('aria-live', 'polite');
    this.details.append(this.actions, this.changesView);

    this.node.append(header, this.list, this.details);

    tracker.currentChanged.connect(() => this.switchNotebook(), this);
    NotebookActions.executed.connect(this.onExecuted, this);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    NotebookActions.executed.disconnect(this.onExecuted, this);
    super.dispose();
  }

  /** The kernel took the after-cell snapshot before it replied: look at once, not at the next tick. */
  private onExecuted(): void {
    window.setTimeout(() => void this.poll(), 100);
  }

  protected onAfterShow(): void {
    this.switchNotebook();
    this.timer = window.setInterval(() => this.poll(), POLL_MS);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
  }

  protected onResize(): void {
    this.render();
  }

  private addButton(key: string, text: string, description: string, action: () => void): void {
    const button = element('button', 'jp-Button cowfs-button', text);
    button.type = 'button';
    button.title = description;
    button.setAttribute('aria-label', `${text}: ${description}`);
    button.disabled = true;
    button.addEventListener('click', action);
    this.buttons[key] = button;
    this.actions.appendChild(button);
  }

  private get selectedRow(): ICellRow | undefined {
    return this.rowAt(this.selected);
  }

  private rowAt(index: number): ICellRow | undefined {
    return this.pages.get(Math.floor(index / PAGE_SIZE))?.[index % PAGE_SIZE];
  }

  private switchNotebook(): void {
    const path = this.tracker.currentWidget?.context.path ?? '';
    if (path === this.notebookPath && this.head !== -1) {
      return;
    }
    this.notebookPath = path;
    this.reset();
    this.selected = 0;
    this.selectedAfter = null;
    this.showChanges(null);
    void this.poll();
  }

  private reset(): void {
    this.generation++;
    this.pages.clear();
    this.loading.clear();
    this.head = -1;
  }

  /** Page 0 tells whether anything changed; then the rows in view are (re)fetched. */
  private async poll(): Promise<void> {
    if (!this.isVisible) {
      return;
    }
    if (!this.notebookPath) {
      this.setStatus('Open a notebook to see its cells.');
      this.total = 0;
      this.render();
      return;
    }
    const generation = this.generation;
    let page: ICellPage;
    try {
      page = await api.cells(this.notebookPath, 0, PAGE_SIZE);
    } catch (error) {
      this.setStatus(error instanceof ApiError ? error.message : String(error));
      return;
    }
    if (generation !== this.generation) {
      return;
    }
    if (!page.in_workspace) {
      this.total = 0;
      this.reset();
      this.head = 0;
      this.setStatus(page.message ?? 'This notebook is not in a cowfs workspace.');
      this.render();
      this.showChanges(null);
      return;
    }
    this.setStatus(`${page.notebook} · branch ${page.branch} · ${page.total} cell${page.total === 1 ? '' : 's'}`);
    if (page.head === this.head && page.total === this.total) {
      return;
    }
    const firstLoad = this.head === -1;
    this.reset();
    this.head = page.head;
    this.total = page.total;
    this.pages.set(0, page.rows);
    this.reselect();
    this.render();
    if (firstLoad || this.changesView.dataset.after !== this.selectedRow?.after) {
      this.showChanges(this.selectedRow ?? null);
    }
    this.updateButtons();
  }

  /** Keep the same cell selected when new cells arrive above it. */
  private reselect(): void {
    const rows = this.pages.get(0) ?? [];
    if (this.selectedAfter === null) {
      this.selected = 0;
    } else {
      const index = rows.findIndex(row => row.after === this.selectedAfter);
      if (index >= 0) {
        this.selected = index;
      }
    }
    this.selected = Math.max(0, Math.min(this.selected, this.total - 1));
    this.selectedAfter = this.selectedRow?.after ?? this.selectedAfter;
  }

  private async fetchPage(number: number): Promise<void> {
    if (this.pages.has(number) || this.loading.has(number)) {
      return;
    }
    this.loading.add(number);
    const generation = this.generation;
    try {
      const page = await api.cells(this.notebookPath, number * PAGE_SIZE, PAGE_SIZE);
      if (generation === this.generation && page.in_workspace) {
        this.pages.set(number, page.rows);
        this.render();
        this.updateButtons();
      }
    } catch (error) {
      this.setStatus(error instanceof ApiError ? error.message : String(error));
    } finally {
      this.loading.delete(number);
    }
  }

  private render(): void {
    this.spacer.style.height = `${this.total * ROW_HEIGHT}px`;
    const top = this.list.scrollTop;
    const height = this.list.clientHeight || ROW_HEIGHT * 20;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.total - 1, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const nodes: HTMLElement[] = [];
    for (let index = first; index <= last; index++) {
      const row = this.rowAt(index);
      if (!row) {
        void this.fetchPage(Math.floor(index / PAGE_SIZE));
      }
      nodes.push(this.rowNode(index, row));
    }
    this.spacer.replaceChildren(...nodes);
    const active = this.total > 0 ? `cowfs-row-${this.selected}` : '';
    if (active) {
      this.list.setAttribute('aria-activedescendant', active);
    } else {
      this.list.removeAttribute('aria-activedescendant');
    }
  }

  private rowNode(index: number, row: ICellRow | undefined): HTMLElement {
    const node = element('div', 'cowfs-row');
    node.id = `cowfs-row-${index}`;
    node.dataset.index = String(index);
    node.setAttribute('role', 'option');
    node.setAttribute('aria-selected', String(index === this.selected));
    node.setAttribute('aria-posinset', String(index + 1));
    node.setAttribute('aria-setsize', String(this.total));
    node.style.top = `${index * ROW_HEIGHT}px`;
    node.style.height = `${ROW_HEIGHT}px`;
    if (!row) {
      node.textContent = 'loading…';
      return node;
    }
    node.dataset.after = row.after;
    const failed = row.success === false;
    const changed = row.files_changed > 0;
    const line1 = element('div', 'cowfs-row-line');
    line1.append(
      element('span', 'cowfs-count', `[${row.execution_count ?? ' '}]`),
      element('span', 'cowfs-first-line', row.first_line || '(empty cell)')
    );
    const line2 = element('div', 'cowfs-row-line cowfs-row-meta');
    const outcome = element('span', failed ? 'cowfs-badge cowfs-error' : 'cowfs-badge cowfs-ok', failed ? 'error' : 'ok');
    if (failed && row.error) {
      outcome.title = row.error;
    }
    line2.append(
      outcome,
      element('span', 'cowfs-time', clock(row.time)),
      element(
        'span',
        changed ? 'cowfs-files' : 'cowfs-files cowfs-nochange',
        changed ? `${row.files_changed} file${row.files_changed === 1 ? '' : 's'} · +${humanSize(row.bytes_added)}` : 'no change'
      )
    );
    if (row.pinned) {
      line2.appendChild(element('span', 'cowfs-pinned', 'pinned'));
    }
    const label = userLabel(row);
    if (label) {
      line2.appendChild(element('span', 'cowfs-label', label));
    }
    node.append(line1, line2);
    node.setAttribute(
      'aria-label',
      `Cell ${row.execution_count ?? ''}: ${row.first_line}. ${failed ? 'error' : 'ok'}, ` +
        `${changed ? `${row.files_changed} files changed` : 'no change'}, at ${clock(row.time)}` +
        (row.pinned ? ', pinned' : '') +
        (label ? `, label ${label}` : '')
    );
    return node;
  }

  private onClick(event: MouseEvent): void {
    const target = (event.target as HTMLElement).closest('.cowfs-row') as HTMLElement | null;
    if (target?.dataset.index) {
      this.select(Number(target.dataset.index));
      this.list.focus();
    }
  }

  private onKey(event: KeyboardEvent): void {
    const visible = Math.max(1, Math.floor(this.list.clientHeight / ROW_HEIGHT) - 1);
    const moves: Record<string, number> = {
      ArrowDown: this.selected + 1,
      ArrowUp: this.selected - 1,
      PageDown: this.selected + visible,
      PageUp: this.selected - visible,
      Home: 0,
      End: this.total - 1
    };
    if (event.key in moves) {
      event.preventDefault();
      this.select(moves[event.key]);
    }
  }

  private select(index: number): void {
    if (this.total === 0) {
      return;
    }
    this.selected = Math.max(0, Math.min(index, this.total - 1));
    const top = this.selected * ROW_HEIGHT;
    if (top < this.list.scrollTop) {
      this.list.scrollTop = top;
    } else if (top + ROW_HEIGHT > this.list.scrollTop + this.list.clientHeight) {
      this.list.scrollTop = top + ROW_HEIGHT - this.list.clientHeight;
    }
    this.selectedAfter = this.selectedRow?.after ?? null;
    this.render();
    this.updateButtons();
    this.showChanges(this.selectedRow ?? null);
  }

  private updateButtons(): void {
    const row = this.selectedRow;
    this.buttons.openBefore.disabled = !row?.before;
    this.buttons.openAfter.disabled = !row;
    this.buttons.pin.disabled = !row;
    this.buttons.label.disabled = !row;
    this.buttons.pin.textContent = row?.pinned ? 'Unpin' : 'Pin';
  }

  private async showChanges(row: ICellRow | null): Promise<void> {
    this.changesView.dataset.after = row?.after ?? '';
    if (!row) {
      this.changesView.replaceChildren(element('p', 'cowfs-hint', this.total ? '' : 'Run a cell to see it here.'));
      return;
    }
    this.changesView.replaceChildren(element('p', 'cowfs-hint', 'loading…'));
    let found: IChanges;
    try {
      found = await api.changes(this.notebookPath, row);
    } catch (error) {
      if (this.changesView.dataset.after === row.after) {
        this.changesView.replaceChildren(element('p', 'cowfs-error-text', String((error as Error).message ?? error)));
      }
      return;
    }
    if (this.changesView.dataset.after !== row.after) {
      return; // another row was selected meanwhile
    }
    const heading = element('h3', 'cowfs-changes-title', `[${row.execution_count ?? ' '}] ${found.before ?? '?'} → ${found.after}`);
    const nodes: HTMLElement[] = [heading];
    if (row.error) {
      nodes.push(element('p', 'cowfs-error-text', row.error));
    }
    if (found.note) {
      nodes.push(element('p', 'cowfs-hint', found.note));
    } else if (found.total === 0) {
      nodes.push(element('p', 'cowfs-hint', 'This cell changed no files.'));
    }
    const list = element('ul', 'cowfs-change-list');
    list.setAttribute('aria-label', `${found.total} files changed`);
    const marks = { added: '+', removed: '−', modified: 'M' };
    for (const change of found.changes) {
      const item = element('li', `cowfs-change cowfs-${change.kind}`);
      const sizes =
        change.kind === 'added'
          ? humanSize(change.size_after)
          : change.kind === 'removed'
            ? humanSize(change.size_before)
            : `${humanSize(change.size_before)} → ${humanSize(change.size_after)}`;
      item.append(
        element('span', 'cowfs-mark', marks[change.kind]),
        element('span', 'cowfs-path', change.path),
        element('span', 'cowfs-sizes', sizes)
      );
      item.setAttribute('aria-label', `${change.kind} ${change.path}, ${sizes}`);
      if (change.patch) {
        item.appendChild(this.patchNode(change.patch));
      }
      list.appendChild(item);
    }
    nodes.push(list);
    if (found.total > found.changes.length) {
      nodes.push(element('p', 'cowfs-hint', `and ${found.total - found.changes.length} more`));
    }
    this.changesView.replaceChildren(...nodes);
  }

  private patchNode(patch: string): HTMLElement {
    const pre = element('pre', 'cowfs-patch');
    for (const line of patch.split('\n').slice(2)) {
      const kind = line.startsWith('+') ? 'cowfs-plus' : line.startsWith('-') ? 'cowfs-minus' : line.startsWith('@@') ? 'cowfs-hunk' : '';
      pre.appendChild(element('span', `cowfs-patch-line ${kind}`, `${line}\n`));
    }
    return pre;
  }

  /** The tab is opened at once, inside the click, so no popup blocker stops it. */
  private async openHere(which: 'before' | 'after'): Promise<void> {
    const row = this.selectedRow;
    const snapshot = which === 'before' ? row?.before : row?.after;
    if (!row || !snapshot) {
      return;
    }
    const tab = window.open('', '_blank');
    this.setStatus(`Mounting ${snapshot} as a new branch…`);
    try {
      const opened = await api.open(this.notebookPath, snapshot);
      const url =
        opened.path !== null
          ? URLExt.join(PageConfig.getBaseUrl(), 'lab', 'tree', URLExt.encodeParts(opened.path))
          : (opened.url ?? '');
      if (tab) {
        tab.location.href = url;
      } else {
        window.open(url, '_blank');
      }
      this.setStatus(
        `Opened ${opened.snapshot} at ${opened.directory}` +
          (opened.path === null ? ' with a Jupyter server of its own' : '') +
          (opened.restores_variables ? '; its first kernel restores the variables' : '')
      );
    } catch (error) {
      tab?.close();
      this.setStatus(String((error as Error).message ?? error));
    }
  }

  private async togglePin(): Promise<void> {
    const row = this.selectedRow;
    if (!row) {
      return;
    }
    try {
      await api.pin(this.notebookPath, row, !row.pinned);
      this.head = -2; // refetch on the next poll
      await this.poll();
    } catch (error) {
      this.setStatus(String((error as Error).message ?? error));
    }
  }

  private async relabel(): Promise<void> {
    const row = this.selectedRow;
    if (!row) {
      return;
    }
    const answer = await InputDialog.getText({
      title: `Label the snapshot after cell [${row.execution_count ?? ' '}]`,
      text: userLabel(row),
      placeholder: 'before the SVM'
    });
    if (!answer.button.accept || answer.value === null) {
      return;
    }
    try {
      await api.label(this.notebookPath, row.after, answer.value);
      this.head = -2;
      await this.poll();
    } catch (error) {
      this.setStatus(String((error as Error).message ?? error));
    }
  }

  private setStatus(text: string): void {
    this.status.textContent = text;
  }
}

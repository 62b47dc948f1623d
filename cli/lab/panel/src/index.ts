/**
 * cowfs for JupyterLab: the Cell history panel in the left sidebar.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { CellHistoryPanel } from './panel';

const historyIcon = new LabIcon({
  name: 'cowfs:cell-history',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    'd="M13 3a9 9 0 0 0-9 9H1l3.9 3.9.1.1L9 12H6a7 7 0 1 1 2.05 4.95l-1.42 1.42A9 9 0 1 0 13 3zm-1 5v5l4.25 2.52.77-1.28-3.52-2.09V8z"/></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'cowfs-lab:cell-history',
  description: 'Every executed cell with its snapshot, what it changed, and Open here.',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  activate: (_app: JupyterFrontEnd, shell: ILabShell, tracker: INotebookTracker) => {
    const panel = new CellHistoryPanel(tracker);
    panel.title.icon = historyIcon;
    shell.add(panel, 'left', { rank: 650 });
  }
};

export default plugin;

// Parse every ```mermaid block in the given notebooks with Mermaid's own parser (the one JupyterLab renders with).
// Prints one line per diagram; exits 1 if any diagram fails to parse. Usage: node check_mermaid.mjs NB.ipynb ...
import { JSDOM } from 'jsdom';
import fs from 'fs';

const dom = new JSDOM('<!DOCTYPE html><body></body>');   // Mermaid's sanitiser needs a DOM, not a browser
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaid = (await import('mermaid')).default;
mermaid.initialize({ startOnLoad: false });

let failed = 0, total = 0;
for (const path of process.argv.slice(2)) {
  const cells = JSON.parse(fs.readFileSync(path, 'utf8')).cells;
  for (const [index, cell] of cells.entries()) {
    if (cell.cell_type !== 'markdown') continue;
    const source = Array.isArray(cell.source) ? cell.source.join('') : cell.source;
    for (const match of source.matchAll(/```mermaid\n([\s\S]*?)```/g)) {
      total++;
      try {
        await mermaid.parse(match[1]);
        console.log(`ok   ${path} cell ${index}`);
      } catch (error) {
        failed++;
        const message = String(error.message || error).split('\n').slice(0, 3).join(' | ');
        console.log(`FAIL ${path} cell ${index}: ${message}`);
      }
    }
  }
}
console.log(`${total} diagrams, ${failed} failed`);
process.exit(failed ? 1 : 0);

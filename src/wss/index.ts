// Working-set scanning and access tracking (see docs/wss.md).
export * from './methods.js';
export * from './tracker.js';
export * from './pages.js';
export * from './history.js';
export { PageStore } from './store.js';
export { PagePins } from './pins.js';
export * from './workload.js';
export * from './heatmap.js';
export { Scanner, type ScanOptions, type PageRegion, categoryNames } from '../kernel/pagemap.js';

export * from './engine.js';
export { PAGE_MISSING, PAGE_FILLING, PAGE_PRESENT, PAGE_DROPPED } from './shared.js';
export { EngineThreads } from './threads.js';

// What engine threads and the main thread tell each other beside the shared tables.

/** A non-fault event a thread read and applied (forwarded as Engine events), or an incident. */
export type EventMessage =
  | { type: 'remove' | 'unmap'; start: number; end: number }
  | { type: 'remap'; from: number; to: number; len: number }
  | { type: 'fork'; ufd: number }
  | { type: 'unknown'; event: number };

/** Something went wrong in a thread that the engine reports (Engine 'incident'). */
export interface IncidentMessage { type: 'incident'; message: string }

/** A worker asks the main thread for the bytes of a callback source (answered in its CallbackSlot). */
export interface CallbackRequest { type: 'callback'; shard: number; id: number; source: number; offset: number; len: number }

/** The dispatcher is leaving (stop). */
export interface ExitMessage { type: 'exit' }

/** Everything a reader posts: events and incidents. */
export type ThreadMessage = EventMessage | IncidentMessage;

/** Dispatcher -> main thread. */
export type DispatcherMessage = ThreadMessage | ExitMessage;

/** Worker -> main thread, over the port of its shard task. */
export type WorkerMessage = ThreadMessage | CallbackRequest;

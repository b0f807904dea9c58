// What engine threads and the main thread tell each other beside the shared tables.
import type { ForkEvent, RemapEvent, RemoveEvent, UnknownEvent, UnmapEvent } from '../kernel/messages.js';

/** A non-fault event a thread read and applied (forwarded as Engine events), as the kernel layer decodes it. */
export type EventMessage = RemoveEvent | UnmapEvent | RemapEvent | ForkEvent | UnknownEvent;

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

/** A small typed event emitter (no dependency on Node's `events` or the DOM's `EventTarget`). */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  private readonly listeners = new Map<keyof Events, Set<Listener>>();

  /** Call `listener` on every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Call `listener` on the next `event` only. */
  once<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    const wrapped = ((...args: Parameters<Events[K]>) => {
      off();
      listener(...args);
    }) as Events[K];
    const off = this.on(event, wrapped);
    return off;
  }

  /** Stop calling `listener` on `event`. */
  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    this.listeners.get(event)?.delete(listener);
  }

  /** How many listeners `event` has. */
  listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  /**
   * Call every listener of `event`. A listener that throws does not stop the others nor the
   * client: its exception is handed to `onListenerError`.
   */
  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.listeners.get(event);
    if (set === undefined) {
      return;
    }
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (e) {
        this.onListenerError(e);
      }
    }
  }

  /** Where listener exceptions go; by default thrown asynchronously, as a browser would. */
  protected onListenerError(error: unknown): void {
    setTimeout(() => {
      throw error;
    }, 0);
  }
}

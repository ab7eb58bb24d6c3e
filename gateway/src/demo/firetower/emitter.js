/** A small typed event emitter (no dependency on Node's `events` or the DOM's `EventTarget`). */
export class Emitter {
    listeners = new Map();
    /** Call `listener` on every `event`; returns a function that removes it. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (set === undefined) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(listener);
        return () => this.off(event, listener);
    }
    /** Call `listener` on the next `event` only. */
    once(event, listener) {
        const wrapped = ((...args) => {
            off();
            listener(...args);
        });
        const off = this.on(event, wrapped);
        return off;
    }
    /** Stop calling `listener` on `event`. */
    off(event, listener) {
        this.listeners.get(event)?.delete(listener);
    }
    /** How many listeners `event` has. */
    listenerCount(event) {
        return this.listeners.get(event)?.size ?? 0;
    }
    /**
     * Call every listener of `event`. A listener that throws does not stop the others nor the
     * client: its exception is handed to `onListenerError`.
     */
    emit(event, ...args) {
        const set = this.listeners.get(event);
        if (set === undefined) {
            return;
        }
        for (const listener of [...set]) {
            try {
                listener(...args);
            }
            catch (e) {
                this.onListenerError(e);
            }
        }
    }
    /** Where listener exceptions go; by default thrown asynchronously, as a browser would. */
    onListenerError(error) {
        setTimeout(() => {
            throw error;
        }, 0);
    }
}

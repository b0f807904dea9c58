// Undo actions registered by a test, run after each test (last registered first), best effort.
export function useCleanups(): (() => void)[] {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    while (cleanups.length) {
      try {
        cleanups.pop()!();
      } catch { /* best effort */ }
    }
  });
  return cleanups;
}

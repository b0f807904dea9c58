// Time limits in tests guard against hangs; they are sized for the host. Under emulation
// (QEMU TCG, `npm run test:kernel`) everything runs about ten times slower, so
// scripts/kernel-init.sh sets UFFD_TEST_TIME_SCALE and every limit is multiplied by it.
export const TIME_SCALE = Math.max(1, Number(process.env.UFFD_TEST_TIME_SCALE) || 1);

/** A hang guard of `ms` on the host, scaled for slow (emulated) machines. */
export function limit(ms: number): number {
  return ms * TIME_SCALE;
}

// The kernel layer: the only code that talks to the kernel (through koffi).
export * as uapi from './constants.js';
export * from './errors.js';
export * from './messages.js';
export * from './userfaultfd.js';
export * from './memory.js';
export { addressOf, viewOf, errnoName, ERRNO } from './libc.js';
export * from './time.js';
export * from './sched.js';
export * as kvm from './kvm.js';
export * as kvmVcpu from './kvm-vcpu.js';
export * as socket from './socket.js';
export { Scanner } from './pagemap.js';
export { Pipe } from './pipe.js';

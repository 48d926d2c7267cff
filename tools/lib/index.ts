/** Helpers shared by tools/ and tests: import from 'tools/lib' (dist/tools/lib). */
export * from './cleanup';
export * from './net';
export * from './process';
export * from './server';
export * from './rewind';
export * from './fio';
export * from './loop-mount';
export * from './nbd-image';

export { BackupManager, commitInfo, type BackupManagerOptions, type HistoryCheck, type ManagerStatus } from './backup-manager';
export { HistoryReader, runPosition } from './history';
export { Pins, type Pin } from './pins';
export { ManagerCatalog, type AppliedPointer, type ManagerConfig, type VolumeEntry } from './catalog';
export * from './types';
